"""FLOPs of one policy-update micro-batch, and the GPU's peak bf16 rate, for achieved TFLOP/s and MFU.

The count is taken with ``torch.utils.flop_counter.FlopCounterMode`` on the same calls the update
makes for one micro-batch (``backbone.velocity`` with the run's CFG forward and backward, plus the
KL reference forward when β_KL > 0); the SDE step and the loss are elementwise and negligible.
With gradient checkpointing the backward recomputes the forward: the count as executed includes
it (hardware FLOPs); model FLOPs leave one forward out, as MFU is conventionally defined.
"""

from __future__ import annotations

from typing import Any

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets. Order matters:
# the first substring found in the device name wins ("GH200" before "H200", "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0),
]


def peak_bf16_tflops(device_name: str | None) -> tuple[float | None, str]:
    """The peak dense bf16 rate of the GPU called ``device_name``, with a note saying where it came
    from; ``(None, note)`` for an unknown GPU (MFU is then not reported, not guessed)."""
    if not device_name:
        return None, "no GPU: MFU not defined"
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, f"{device_name}: peak {tflops:g} dense bf16 TFLOP/s (matched '{key}')"
    return None, f"{device_name}: peak bf16 rate unknown to benchmarks/gpu/flops.py, so MFU is null"


def count_update_flops(backbone: Any, config: Any, rows: int, prompt: str) -> dict[str, float]:
    """FLOPs of one micro-batch of the policy update: ``rows`` = trajectories × trained steps
    batched into one forward (as ``grpo_guard.training.update.policy_update`` does), at the config's
    resolution, CFG and KL settings. Returns executed, forward-only and model FLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from grpo_guard.models.base import select_embeds

    shape = backbone.latent_shape(config.resolution)
    x = torch.randn(rows, *shape, device=backbone.device)
    sigmas = backbone.sigmas(config.num_steps, config.shift, config.resolution).to(backbone.device)
    sig = sigmas[torch.arange(rows, device=backbone.device) % (len(sigmas) - 1)]
    cond = select_embeds(backbone.encode_prompts([prompt]), [0] * rows)

    def forward() -> torch.Tensor:
        return backbone.velocity(x, sig, cond, cfg_scale=config.cfg_scale, detach_uncond=config.detach_uncond)

    def reference_forward() -> None:
        if config.kl_beta > 0:
            with torch.no_grad(), backbone.reference():
                forward()

    backbone.train()
    try:
        with FlopCounterMode(display=False) as fwd_bwd:
            forward().square().mean().backward()
            reference_forward()
        with FlopCounterMode(display=False) as fwd_only, torch.no_grad():
            forward()
    finally:
        backbone.eval()
        for p in backbone.trainable_parameters():
            p.grad = None
    executed, forward_flops = float(fwd_bwd.get_total_flops()), float(fwd_only.get_total_flops())
    recompute = forward_flops if config.gradient_checkpointing else 0.0
    return {"rows": float(rows), "executed_flops": executed, "forward_flops": forward_flops,
            "model_flops": executed - recompute}


def achieved(flops: dict[str, float], seconds_per_micro_batch: float, peak_tflops: float | None) -> dict[str, Any]:
    """Achieved TFLOP/s (model and hardware) and MFU from a count and a measured time."""
    model = flops["model_flops"] / seconds_per_micro_batch / 1e12
    hardware = flops["executed_flops"] / seconds_per_micro_batch / 1e12
    return {"update_tflops": model, "update_hw_tflops": hardware,
            "mfu": model / peak_tflops if peak_tflops else None}

"""Correctness on the accelerator: the engine's step math against its float64 CPU reference, and a
resumed run against an uninterrupted one.

1. ``sde_step`` + ``policy_loss`` on the device under bf16 autocast, fed the same inputs as a
   float64 CPU run of the same functions (the velocity rounded to bf16 once, as the transformer
   emits it, then given to both): values and gradients w.r.t. the velocity, for the Flow-GRPO
   settings (raw ratio, β_KL 0.04) and the GRPO-Guard ones (RatioNorm + δ = 1/|dt| reweighting).
2. Resume equals uninterrupted on the toy backbone: N epochs straight vs N/2, stop, resume from
   the checkpoint; every logged scalar is compared (the CPU version is
   ``tests/grpo_guard/test_trainer.py::test_resume_continues_exactly``; the stop control is shared).

Tolerances (normwise: max|device − reference| / max|reference|, per quantity):

- ``VALUE_RTOL`` = 1e-4 for every value and the gradient. The step math runs in float32 by design
  (ALGORITHM.md §1 rule 1; ``sde_step`` upcasts). float32's unit roundoff is 6e-8 and the longest
  reductions are means over D latent elements (pairwise summation: error ~ log2(D)·u ≈ 1e-6 for
  D = 65,536), so 1e-4 leaves two orders of margin; bf16's unit roundoff is 3.9e-3, so any step
  quantity silently computed in bf16 (autocast reaching the step math) fails by 40×.
- The log-ratio is compared in absolute terms against the clip range ε_c: ``LOG_RATIO_TOL`` =
  1 % of ε_c, so clip decisions and the surrogate move by at most 1 % of the trust region. A
  relative bound cannot hold: the ratio is ~ε_c (1e-4, Guard 2e-6) while Flow-GRPO's Δ log p is a
  float32 difference of two log-probs of size ~1 and Guard's d = μ_θ − μ_old a difference of two
  means of size ~1 (cancellation: ~1e-7 absolute, i.e. 0.1 % of 1e-4). A log-prob computed in
  bf16 (error ~4e-3) misses this bound by three orders of magnitude.
- Rows whose reference ratio lies within 1 % of the clip range of a clip boundary are counted: the
  clip decision there may legitimately differ between precisions (the gradient of that row is then
  zero on one side). The inputs are drawn so that none does; the report says if one did.

    python benchmarks/gpu/correctness.py --out correctness.json [--tiny] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run as a script: the repository's packages (grpo_guard, tests) by path
    sys.path.insert(0, ROOT)
VALUE_RTOL = 1e-4
LOG_RATIO_TOL = 1e-2  # × the clip range, absolute
BOUNDARY_MARGIN = 0.01
# Loss settings per algorithm, from the config's defaults (the paper's, ALGORITHM.md §5).
SETTINGS = ("flow_grpo", "grpo_guard")


def _inputs(tiny: bool, seed: int, eps: float) -> dict[str, Any]:
    """A batch of rows at different denoising steps (so |dt| and δ differ per row) in float64 on
    the CPU; the old and reference policies are the current one's velocity moved by ±``eps`` along
    one random direction."""
    import torch

    from grpo_guard.sde import flow_sigmas, sde_step

    g = torch.Generator().manual_seed(seed)
    shape = (8, 4, 16, 16) if tiny else (8, 16, 64, 64)   # toy latents / SD3.5-M at 512 px
    sig = flow_sigmas(10, shift=3.0, dtype=torch.float64)
    j = torch.arange(shape[0]) % 9
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    v = torch.randn(shape, generator=g, dtype=torch.float64).to(torch.bfloat16).to(torch.float64)
    direction = torch.randn(shape, generator=g, dtype=torch.float64)
    old = sde_step(v + eps * direction, x, sig[j], sig[j + 1], generator=g)
    ref = sde_step(v - eps * direction, x, sig[j], sig[j + 1], prev_sample=old.prev_sample)
    adv = torch.randn(shape[0], generator=g, dtype=torch.float64).clamp(-3, 3)
    return {"v": v, "x": x, "sigma": sig[j], "sigma_next": sig[j + 1], "prev": old.prev_sample,
            "old_lp": old.log_prob, "old_mean": old.mean, "ref_mean": ref.mean, "adv": adv}


def _loss_and_grad(inp: dict[str, Any], algo: dict[str, Any], device: str, autocast: bool) -> dict[str, Any]:
    """The update's per-step math on ``device``: float64 on the CPU for the reference, float32
    inputs under bf16 autocast on the device (the dtypes the trainer hands these functions)."""
    import torch

    from grpo_guard.policy import policy_loss
    from grpo_guard.sde import sde_step

    dtype = torch.float32 if autocast else torch.float64
    t = {k: val.to(device=device, dtype=dtype) for k, val in inp.items()}
    v = t["v"].clone().requires_grad_(True)
    ctx = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if autocast \
        else contextlib.nullcontext()
    with ctx:
        st = sde_step(v, t["x"], t["sigma"], t["sigma_next"], noise_level=algo["noise_level"],
                      dynamics=algo["dynamics"], prev_sample=t["prev"])
        loss_kw = dict(clip_range=algo["clip_range"], ratio_norm=algo["ratio_norm"],
                       grad_reweight=algo["grad_reweight"], mean=st.mean, old_mean=t["old_mean"], std=st.std,
                       dt=st.dt, delta=algo["delta"] if algo["grad_reweight"] else "inv_dt", beta=st.beta,
                       prev_sample=t["prev"], kl_beta=algo["kl_beta"], ref_mean=t["ref_mean"],
                       std_dev_t=st.std_dev_t)
        out = policy_loss(st.log_prob, t["old_lp"], t["adv"], **loss_kw)
    out.loss.backward()
    got = {"log_prob": st.log_prob, "mean": st.mean, "std": st.std.expand_as(st.mean), "loss": out.loss,
           "per_sample": out.per_sample, "log_ratio": out.log_ratio, "grad_velocity": v.grad}
    return {k: val.detach().to("cpu", torch.float64) for k, val in got.items()}


def step_math_check(device: str, tiny: bool, seed: int = 0) -> list[dict[str, Any]]:
    """One row per algorithm setting: max normwise relative error of each quantity, pass/fail."""
    from grpo_guard.config import ALGORITHM_DEFAULTS

    rows = []
    for name in SETTINGS:
        algo = ALGORITHM_DEFAULTS[name]
        # The log-ratio is linear in a small shift of the old policy: scale the shift so that its
        # rms is twice the clip range (a few rows clipped on each side, most inside).
        probe = _loss_and_grad(_inputs(tiny, seed, 1e-3), algo, "cpu", autocast=False)["log_ratio"]
        eps = 1e-3 * 2 * algo["clip_range"] / float(probe.square().mean().sqrt())
        inp = _inputs(tiny, seed, eps)
        ref = _loss_and_grad(inp, algo, "cpu", autocast=False)
        dev = _loss_and_grad(inp, algo, device, autocast=True)
        errors = {k: float((dev[k] - r).abs().max() / r.abs().max().clamp_min(1e-300)) for k, r in ref.items()
                  if k != "log_ratio"}
        ratio_err = float((dev["log_ratio"] - ref["log_ratio"]).abs().max()) / algo["clip_range"]
        ratio = ref["log_ratio"].exp()
        near = ((ratio - (1 + algo["clip_range"])).abs() < BOUNDARY_MARGIN * algo["clip_range"]) | \
               ((ratio - (1 - algo["clip_range"])).abs() < BOUNDARY_MARGIN * algo["clip_range"])
        clipped = (ratio > 1 + algo["clip_range"]) | (ratio < 1 - algo["clip_range"])
        rows.append({"setting": name, "device": device, "rows": int(ratio.numel()),
                     "elements": int(inp["v"].numel()), "clip_range": algo["clip_range"], "rtol": VALUE_RTOL,
                     "errors": errors, "worst": max(errors, key=errors.get),
                     "log_ratio_error_over_clip_range": ratio_err, "log_ratio_tol": LOG_RATIO_TOL,
                     "rows_clipped": int(clipped.sum()), "rows_near_clip_boundary": int(near.sum()),
                     "passed": all(e <= VALUE_RTOL for e in errors.values()) and ratio_err <= LOG_RATIO_TOL})
    return rows


def _rel_diffs(a: dict, b: dict) -> list[float]:
    """Relative differences of the scalars both runs logged (two NaNs agree)."""
    return [abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a
            if k in b and not (math.isnan(a[k]) and math.isnan(b[k]))]


def resume_check(device: str, tiny: bool) -> dict[str, Any]:
    """Toy backbone, N epochs straight vs N/2 + stop + resume: every logged scalar (timings aside)
    must agree. Exactly on the CPU. On CUDA a second uninterrupted run measures the device's own
    run-to-run floor (deterministic algorithms are requested, but some kernels may still add in a
    varying order); the resumed run must agree to float32 rounding (rtol 1e-5) or to 10× that
    floor, whichever is larger, and the report gives both numbers."""
    import torch

    from grpo_guard.config import RunConfig
    from grpo_guard.training.recording import MemoryControl, MemoryRecorder
    from grpo_guard.training.trainer import train
    from tests.grpo_guard.controls import StopAfter

    epochs = 2 if tiny else 4
    cfg = RunConfig.from_dict(dict(
        backbone="toy", algorithm="flow_grpo", epochs=epochs, group_size=4, prompts_per_epoch=2,
        train_batch_size=4, gradient_accumulation_steps=2, num_steps=4 if tiny else 10, eval_num_steps=4,
        eval_every=1, checkpoint_every=100, eval_prompts=["a red circle on a blue background"], eval_seeds=[0],
        rewards={"toy_shape": 1.0, "toy_fg_share": 1.0}, gold=["toy_alignment"], lora_rank=0, ema=True,
        ema_every=1, learning_rate=1e-3, sample_batch_size=8))
    on_cpu = torch.device(device).type == "cpu"
    keep = lambda rec: {k: v for k, v in rec.scalars.items() if not k[1].startswith("time/")}  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gg-resume-") as d:
        full = MemoryRecorder(os.path.join(d, "full"))
        r_full = train(cfg, full, MemoryControl(), device=device)
        cut = MemoryRecorder(os.path.join(d, "cut"))
        r_cut = train(cfg, cut, StopAfter(epochs // 2), device=device)
        r_res = train(cfg, cut, MemoryControl(), device=device, resume_from=r_cut.last_checkpoint)
        floor = 0.0
        if not on_cpu:
            again = MemoryRecorder(os.path.join(d, "again"))
            train(cfg, again, MemoryControl(), device=device)
            floor = max(_rel_diffs(keep(full), keep(again)), default=0.0)
    a, b = keep(full), keep(cut)
    rel = _rel_diffs(a, b)
    tol = 0.0 if on_cpu else max(1e-5, 10 * floor)
    worst = max(rel, default=math.inf)
    return {"device": device, "epochs": epochs, "stopped_at": r_cut.step, "stopped_status": r_cut.status,
            "resumed_from": r_cut.last_checkpoint and os.path.basename(r_cut.last_checkpoint),
            "resumed_status": r_res.status, "resumed_to": r_res.step, "uninterrupted_status": r_full.status,
            "scalars_compared": len(rel), "keys_only_in_one_run": len(set(a) ^ set(b)),
            "resumed_epochs_compared": sorted({k[0] for k in a if k in b and k[0] > r_cut.step}),
            "exactly_equal": sum(x == 0 for x in rel), "max_rel_diff": worst, "repeat_max_rel_diff": floor,
            "rtol": tol,
            "passed": (r_cut.status == "cancelled" and r_cut.step == epochs // 2 and r_res.step == epochs
                       and not set(a) ^ set(b) and len(rel) > 0 and worst <= tol)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="small inputs, the CPU as the device (CI)")
    p.add_argument("--device", default=None, help="default: cuda, or cpu with --tiny")
    p.add_argument("--out", required=True, help="write the results as JSON here")
    args = p.parse_args(argv)
    import torch

    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("correctness.py: no CUDA GPU is visible; use --tiny (or --device cpu) for the CPU check.",
              file=sys.stderr)
        return 2
    if device.startswith("cuda"):
        # Both resume runs must run identical kernels; must be set before cuBLAS initialises.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"step_math": step_math_check(device, args.tiny)}
    result["resume"] = resume_check(device, args.tiny)
    result["passed"] = all(r["passed"] for r in result["step_math"]) and result["resume"]["passed"]
    result["wall_s"] = time.perf_counter() - t0
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

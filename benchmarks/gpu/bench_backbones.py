"""GPU benchmark of the SD3.5-Medium and FLUX.1-dev backbones at full size, with random weights
built from their published configs (nothing is downloaded).

For each backbone it trains a few epochs through the real trainer (``grpo_guard.training.trainer.train``
with the backbone adapter injected), once with the baseline and once with GRPO-Guard, at the
paper's resolution and step count, and reports:

- sampling throughput (SDE rollout + VAE decode), images/s;
- policy-update time per denoising step (the trainer batches a micro-batch's trained steps
  into one forward/backward; the time is divided by micro-batches × trained steps);
- peak GPU memory (``torch.cuda.max_memory_allocated``);
- GRPO-Guard's overhead over the baseline (update time and peak memory);
- achieved TFLOP/s and MFU of the policy update: one micro-batch's forward + backward counted
  with ``torch.utils.flop_counter`` (``flops.py``), over the measured time per micro-batch, against
  the GPU's peak dense bf16 rate (null for a GPU the table does not know).

The reward is a cheap image statistic (this measures the engine, not a reward model). Text
encoders are built with their real output widths but one layer each unless
``--full-text-encoders`` is given (prompt embeddings are cached per prompt, so they only affect
memory, by about 11 GB in bf16 for T5-XXL + both CLIPs).

    python benchmarks/gpu/bench_backbones.py --out bench.json            # needs CUDA
    python benchmarks/gpu/bench_backbones.py --tiny                       # CPU check of the code path
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import achieved, count_update_flops, peak_bf16_tflops  # noqa: E402

# ---- published architectures (config.json of the hub models) ---------------------------------
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                 guidance_embeds=True, axes_dims_rope=(16, 56, 56))
VAE_16CH = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=16, sample_size=1024, use_quant_conv=False,
                use_post_quant_conv=False)
VAE_SCALING = {"sd3": dict(scaling_factor=1.5305, shift_factor=0.0609),
               "flux": dict(scaling_factor=0.3611, shift_factor=0.1159)}
# (hidden, layers, heads, intermediate, projection) of CLIP-L and CLIP-G; T5-XXL encoder.
CLIP_L, CLIP_G = (768, 12, 12, 3072, 768), (1280, 32, 20, 5120, 1280)
T5_XXL = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, feed_forward_proj="gated-gelu")

# The paper's settings (ALGORITHM.md §5): resolution, steps, CFG / guidance, baseline vs Guard.
SETUPS = {
    "sd3": dict(resolution=512, num_steps=10, cfg_scale=4.5, algorithms=("flow_grpo", "grpo_guard")),
    "flux": dict(resolution=512, num_steps=16, cfg_scale=3.5, algorithms=("dance_grpo", "dance_grpo_guard")),
}
TINY = dict(resolution=32, num_steps=4)
PROMPTS = ["a red circle on a blue background", "a photo of a cat", "an astronaut riding a horse"]


@contextlib.contextmanager
def default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def text_encoders(kind: str, full: bool, dtype):
    """Tokenizers (offline, built in code) and text encoders with the real output widths."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from grpo_guard.toyworld.tokenizers import make_clip_tokenizer, make_t5_tokenizer

    tok = make_clip_tokenizer(model_max_length=77)
    t5_tok = make_t5_tokenizer(model_max_length=512)

    def clip(spec, projection: bool):
        hidden, layers, heads, inter, proj = spec
        cfg = CLIPTextConfig(vocab_size=49408 if full else len(tok), hidden_size=hidden, intermediate_size=inter,
                             num_hidden_layers=layers if full else 1, num_attention_heads=heads, projection_dim=proj,
                             max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)

    t5_cfg = dict(T5_XXL, num_layers=T5_XXL["num_layers"] if full else 1)
    with default_dtype(dtype):
        t5 = T5EncoderModel(T5Config(vocab_size=32128 if full else len(t5_tok), decoder_start_token_id=0,
                                     pad_token_id=0, eos_token_id=1, **t5_cfg))
        if kind == "sd3":
            return dict(text_encoder=clip(CLIP_L, True), tokenizer=tok, text_encoder_2=clip(CLIP_G, True),
                        tokenizer_2=make_clip_tokenizer(model_max_length=77), text_encoder_3=t5, tokenizer_3=t5_tok)
        return dict(text_encoder=clip(CLIP_L, False), tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok)


def full_pipeline(kind: str, device: str, full_text: bool):
    """The full-size pipeline with random weights, built directly on ``device`` (bf16 networks,
    float32 VAE)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with torch.device(device):
        vae = AutoencoderKL(**VAE_16CH, **VAE_SCALING[kind])
        with default_dtype(torch.bfloat16):
            if kind == "sd3":
                transformer = SD3Transformer2DModel(**SD35_MEDIUM)
            else:
                transformer = FluxTransformer2DModel(**FLUX1_DEV)
        enc = text_encoders(kind, full_text, torch.bfloat16)
    if kind == "sd3":
        return StableDiffusion3Pipeline(transformer=transformer, vae=vae,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), **enc)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(transformer=transformer, vae=vae, scheduler=sched, **enc)


def tiny_pipeline(kind: str):
    from grpo_guard.models import testing

    return testing.tiny_sd3_pipeline() if kind == "sd3" else testing.tiny_flux_pipeline()


def brightness_reward(images, prompts):
    """A cheap reward with within-group variance (mean intensity): the engine is measured, not a reward."""
    return images.reshape(len(images), -1).mean(1) / 255.0


def run_one(kind: str, algorithm: str, backbone, args, setup: dict) -> dict:
    """Train ``args.epochs`` epochs of one algorithm; returns the last epoch's timings."""
    import torch

    from grpo_guard.config import RunConfig
    from grpo_guard.training.recording import MemoryRecorder, NullControl
    from grpo_guard.training.trainer import train

    cfg = RunConfig.from_dict(dict(
        backbone=kind, model="(built in memory)", algorithm=algorithm, resolution=setup["resolution"],
        num_steps=setup["num_steps"], eval_num_steps=setup["num_steps"], cfg_scale=setup["cfg_scale"],
        group_size=args.group_size, prompts_per_epoch=args.groups, train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=1, epochs=args.epochs, lora_rank=32, lora_alpha=64.0,
        mixed_precision="no" if args.tiny else "bf16", gradient_checkpointing=args.gradient_checkpointing,
        sample_batch_size=args.sample_batch_size, prompts=PROMPTS, eval_prompts=PROMPTS[:1], eval_seeds=[0],
        rewards={"brightness": 1.0}, gold=[], eval_every=10_000, checkpoint_every=10_000, ema=False))
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rec = MemoryRecorder(tempfile.mkdtemp(prefix="gg-bench-"))
    t0 = time.perf_counter()
    train(cfg, rec, NullControl(), backbone=backbone, rewards={"brightness": brightness_reward})
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    last = cfg.epochs
    n = cfg.samples_per_epoch()
    num_batches = math.ceil(n / cfg.train_batch_size)
    calls = num_batches * cfg.num_trained_steps() * cfg.inner_epochs
    t_sample, t_update = rec.scalars[(last, "time/sample")], rec.scalars[(last, "time/update")]
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None  # before the counting pass
    planned = planned_peak_gib(kind, cfg, backbone) if cuda else None
    flops = count_update_flops(backbone, cfg, cfg.train_batch_size * cfg.num_trained_steps(), PROMPTS[0])
    peak, peak_note = peak_bf16_tflops(torch.cuda.get_device_name() if cuda else None)
    return {
        "backbone": kind, "algorithm": algorithm, "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "resolution": cfg.resolution, "num_steps": cfg.num_steps, "trained_steps": cfg.num_trained_steps(),
        "images_per_epoch": n, "train_batch_size": cfg.train_batch_size,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "sampling_images_per_s": n / t_sample,
        "update_s_per_denoising_step": t_update / calls,
        "epoch_s": rec.scalars[(last, "time/epoch")],
        "peak_memory_gib": peak_mem, "planned_peak_gib": planned,
        "trainable_params": sum(p.numel() for p in backbone.trainable_parameters()),
        "wall_s": wall, "update_flops": flops, "peak_bf16_tflops": peak, "peak_note": peak_note,
        **achieved(flops, t_update / (num_batches * cfg.inner_epochs), peak),
    }


def planned_peak_gib(kind: str, cfg, backbone) -> float | None:
    """``grpo-guard plan``'s peak for this run (the shipped full-size architecture on fake tensors),
    with the planned text encoders and VAE swapped for the ones this benchmark built (one-layer text
    encoders unless --full-text-encoders, a float32 VAE): the estimate to hold against
    ``torch.cuda.max_memory_allocated``."""
    import torch

    from grpo_guard.planning.gpus import gpu_from_memory
    from grpo_guard.planning.plan import GIB, frozen_parameters, make_plan
    from grpo_guard.planning.spec import spec_for

    repo = {"sd3": "stabilityai/stable-diffusion-3.5-medium", "flux": "black-forest-labs/FLUX.1-dev"}[kind]
    try:
        pc = cfg.with_overrides({"model": repo, "update_rows_per_forward": cfg.update_rows_per_forward})
        plan = make_plan(pc, gpu_from_memory(1000.0), device="cuda")
        listed = sum(frozen_parameters(spec_for(pc)).values()) * torch.finfo(torch.bfloat16).bits // 8
    except Exception as e:  # the figure is a comparison, never a reason to lose the measured ones
        print(f"bench: no plan ({e})", file=sys.stderr)
        return None
    built = sum(p.numel() * p.element_size() for name, comp in backbone.pipe.components.items()
                if name != "transformer" and isinstance(comp, torch.nn.Module) for p in comp.parameters())
    return (max(sum(parts.values()) for parts in plan.phase_bytes.values()) - listed + built) / GIB


def drop_adapter(backbone) -> None:
    """Remove the LoRA adapter so the next algorithm starts from the same base (no re-init)."""
    if getattr(backbone, "lora_rank", None):
        backbone.transformer.delete_adapters("default")
    backbone.lora_rank = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny random configs on CPU (checks the code path; not a benchmark)")
    p.add_argument("--backbones", default="sd3,flux", help="comma list of sd3, flux")
    p.add_argument("--group-size", type=int, default=None, help="images per prompt (default 8; tiny 2)")
    p.add_argument("--groups", type=int, default=None, help="prompt groups per epoch (default 2; tiny 2)")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="trajectories per micro-batch; each carries all its trained steps (default 1)")
    p.add_argument("--sample-batch-size", type=int, default=8, help="trajectories per sampling forward")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run; the last one is reported (default 2)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for full size, off for --tiny")
    p.add_argument("--full-text-encoders", action="store_true", help="full-depth CLIP-L/G and T5-XXL (memory)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("bench_backbones.py: no CUDA GPU is visible, so the full-size benchmark cannot run; "
              "use --tiny for a CPU check of the same code path.", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.group_size = args.group_size or (2 if args.tiny else 8)
    args.groups = args.groups or 2
    args.train_batch_size = args.train_batch_size or (4 if args.tiny else 1)
    args.epochs = args.epochs or (1 if args.tiny else 2)
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = not args.tiny

    from grpo_guard.models.flux import FluxBackbone
    from grpo_guard.models.sd3 import SD3Backbone

    results = []
    for kind in [k.strip() for k in args.backbones.split(",") if k.strip()]:
        setup = dict(SETUPS[kind], **(TINY if args.tiny else {}))
        t = time.perf_counter()
        pipe = tiny_pipeline(kind) if args.tiny else full_pipeline(kind, "cuda", args.full_text_encoders)
        cls = SD3Backbone if kind == "sd3" else FluxBackbone
        backbone = cls(pipe, device="cpu" if args.tiny else "cuda", mixed_precision="no" if args.tiny else "bf16",
                       gradient_checkpointing=args.gradient_checkpointing)
        n_params = sum(q.numel() for q in backbone.transformer.parameters())
        print(f"[{kind}] built {n_params / 1e9:.2f}B-parameter transformer in {time.perf_counter() - t:.1f}s",
              file=sys.stderr)
        for algorithm in setup["algorithms"]:
            drop_adapter(backbone)
            r = run_one(kind, algorithm, backbone, args, setup)
            r["transformer_params"] = n_params
            results.append(r)
            print(json.dumps(r), file=sys.stderr)
            write_results(args, results)  # after each run, so a time-boxed caller keeps what finished
        base, guard = results[-2], results[-1]
        guard["guard_update_overhead"] = guard["update_s_per_denoising_step"] / base["update_s_per_denoising_step"] - 1
        if guard["peak_memory_gib"] is not None:
            guard["guard_memory_overhead_gib"] = guard["peak_memory_gib"] - base["peak_memory_gib"]
        del backbone, pipe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        write_results(args, results)

    header = (f"{'backbone':8} {'algorithm':18} {'img/s':>8} {'upd s/step':>11} {'peak GiB':>9} {'Guard ovh':>9} "
              f"{'TFLOP/s':>8} {'MFU':>6}")
    print(header)
    for r in results:
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        ovh = f"{100 * r['guard_update_overhead']:+.1f}%" if "guard_update_overhead" in r else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{r['backbone']:8} {r['algorithm']:18} {r['sampling_images_per_s']:8.3f} "
              f"{r['update_s_per_denoising_step']:11.4f} {mem:>9} {ovh:>9} {r['update_tflops']:8.2f} {mfu:>6}")
    if args.tiny:
        print("(--tiny: tiny random models on CPU; these numbers only show that the code path runs)")
    return 0


def write_results(args: argparse.Namespace, results: list[dict]) -> None:
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())

"""Time one toy epoch of the trainer, phase by phase, for Flow-GRPO and GRPO-Guard at equal settings.

Settings are those of TOYWORLD.md "Cost, and the bar to beat" (flow_grpo's official loop took
11.56 s per such epoch on a 2-core machine; the bar is ≤ 8.9 s): 8 prompts × 8 images, 10 steps,
CFG 4.0 in sampling and in the update (full gradient, nothing detached), 9 trained steps, micro-
batches of 8 images with accumulation 2 (8 micro-batches, 4 optimizer steps per epoch), full
fine-tuning, float32, no KL. Both arms see the same seeds, prompts and rewards.

    python benchmarks/trainer/bench_epoch.py [--epochs 3] [--threads 2] [--model DIR] [--json OUT]

Prints a markdown table: seconds per phase (time/sample, time/reward, time/update, time/record,
from the trainer's own scalars), averaged over the measured epochs (the first epoch is a warm-up),
and the Guard / Flow-GRPO ratio of the update time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from grpo_guard.training import cpu  # noqa: E402  (torch-free)

cpu.apply()  # as `grpo-guard train` does, before torch: passive OpenMP waits, malloc settings

PHASES = ("time/sample", "time/reward", "time/update", "time/record", "time/epoch")


def bench_config(algorithm: str, model: str | None, epochs: int):
    from grpo_guard.config import RunConfig

    return RunConfig.from_dict(dict(
        backbone="toy", model=model, algorithm=algorithm, num_steps=10, cfg_scale=4.0, timestep_fraction=0.99,
        group_size=8, prompts_per_epoch=8, train_batch_size=8, gradient_accumulation_steps=2,
        lora_rank=0, kl_beta=0.0, detach_uncond=False, epochs=epochs, eval_every=10_000, checkpoint_every=10_000,
        eval_prompts=["a red circle on a blue background"], eval_seeds=[0], eval_num_steps=2,
        rewards={"toy_fg_share": 1.0}, gold=[], seed=0))


def run_arm(algorithm: str, model: str | None, epochs: int) -> dict[str, list[float]]:
    from grpo_guard.models import build_backbone
    from grpo_guard.training.recording import FolderRecorder, MemoryControl, read_jsonl
    from grpo_guard.training.trainer import train

    cfg = bench_config(algorithm, model, epochs)
    backbone = build_backbone(cfg, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        train(cfg, FolderRecorder(out), MemoryControl(), backbone=backbone)
        rows = read_jsonl(os.path.join(out, "scalars.jsonl"), dedupe=False)
    series: dict[str, dict[int, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k in PHASES:
                series.setdefault(k, {})[r["step"]] = v
    return {k: [v for s, v in sorted(d.items()) if s > 1] for k, d in series.items()}  # drop the warm-up epoch


def update_ab(model: str | None, reps: int) -> dict[str, list[float]]:
    """The update alone, A/B interleaved: one rollout, then Flow-GRPO and GRPO-Guard updates from
    the same weights and optimizer state, alternating, ``reps`` times each (robust to load drift)."""
    import copy

    import torch

    from grpo_guard.models import build_backbone
    from grpo_guard.policy import group_advantages
    from grpo_guard.prompts import resolve_prompts
    from grpo_guard.training.rollout import derive_generator, sample_rollouts, trained_steps
    from grpo_guard.training.train_state import TrainerState
    from grpo_guard.training.update import micro_batches, policy_update

    cfgs = {a: bench_config(a, model, 1) for a in ("flow_grpo", "grpo_guard")}
    c = cfgs["flow_grpo"]
    bb = build_backbone(c, device="cpu")
    bb.add_lora(0, 1.0, c.lora_targets)
    prompts = resolve_prompts(c.prompts)[:c.prompts_per_epoch]
    idx = torch.arange(c.prompts_per_epoch).repeat_interleave(c.group_size)
    shape = bb.latent_shape(c.resolution)
    noise = torch.randn(len(idx), *shape, generator=derive_generator(0, 1))
    sig = bb.sigmas(c.num_steps, c.shift, c.resolution)
    steps = trained_steps("first", c.num_steps, c.num_trained_steps(), len(idx))
    ro = sample_rollouts(bb, prompts, idx, sig, steps, noise, seed_keys=(0, 1, 2), cfg_scale=c.cfg_scale,
                         noise_level=c.noise_level, dynamics=c.dynamics)
    adv = group_advantages(torch.randn(len(idx), generator=derive_generator(0, 3)).double(), idx).float()
    keep = torch.arange(len(idx))
    batches = micro_batches(keep, keep[:0], len(idx) // c.train_batch_size, 1, derive_generator(0, 4))
    snapshot = {k: v.clone() for k, v in bb.transformer.state_dict().items()}
    variants = {"flow_grpo": (cfgs["flow_grpo"], True), "grpo_guard": (cfgs["grpo_guard"], True),
                "grpo_guard without grad_norm_v": (cfgs["grpo_guard"], False)}
    times: dict[str, list[float]] = {a: [] for a in variants}
    for _ in range(reps):
        for name, (cfg, gnv) in variants.items():
            bb.transformer.load_state_dict(snapshot)
            params = bb.trainable_parameters()
            opt = torch.optim.AdamW(params, lr=1e-5)
            t = time.perf_counter()
            policy_update(bb, opt, params, copy.copy(ro), adv, batches, cfg, None, TrainerState(),
                          grad_norm_v=gnv)
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per arm (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="toy pipeline directory (default: the shipped base model)")
    ap.add_argument("--min", action="store_true", help="report the fastest measured epoch, not the mean (shared machines)")
    ap.add_argument("--reps", type=int, default=5, help="A/B repetitions of the update-only comparison")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = {}
    for algo in ("flow_grpo", "grpo_guard"):
        t = time.perf_counter()
        results[algo] = run_arm(algo, args.model, args.epochs)
        print(f"{algo}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    mean = {a: {k: min(v) if args.min else statistics.mean(v) for k, v in r.items()} for a, r in results.items()}
    print(f"\ntorch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, "
          f"load average at start {load:.1f}, {args.epochs - 1} measured epochs per arm "
          f"({'fastest' if args.min else 'mean'})\n")
    print("| phase | Flow-GRPO (s) | GRPO-Guard (s) |")
    print("|---|---|---|")
    for k in PHASES:
        print(f"| {k} | {mean['flow_grpo'][k]:.3f} | {mean['grpo_guard'][k]:.3f} |")
    ratio = mean["grpo_guard"]["time/update"] / mean["flow_grpo"]["time/update"]
    print(f"\nGuard / Flow-GRPO update time: {ratio:.3f} ({(ratio - 1) * 100:+.1f} %)")
    for a in mean:
        share = mean[a]["time/record"] / mean[a]["time/epoch"] * 100
        print(f"{a}: recording {share:.2f} % of an epoch")
    ab = update_ab(args.model, args.reps)
    # On a shared machine the minimum over interleaved repetitions estimates the uncontended cost.
    med = {a: min(v) for a, v in ab.items()}
    ab_ratio = med["grpo_guard"] / med["flow_grpo"]
    gnv = med["grpo_guard"] / med["grpo_guard without grad_norm_v"]
    print(f"\nupdate only, interleaved x{args.reps} (min s): Flow-GRPO {med['flow_grpo']:.3f}, "
          f"GRPO-Guard {med['grpo_guard']:.3f}, ratio {ab_ratio:.3f} ({(ab_ratio - 1) * 100:+.1f} %); "
          f"Guard without grad_norm_v {med['grpo_guard without grad_norm_v']:.3f} "
          f"(grad_norm_v costs {(gnv - 1) * 100:+.1f} %)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"per_epoch": results, "mean": mean, "update_ab": ab, "threads": args.threads, "load": load},
                      fh, indent=1)


if __name__ == "__main__":
    main()

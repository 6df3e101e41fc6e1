"""SYNTHETIC data for UI tests, the UI benchmark and README screenshots: fills the store with
runs whose curves, per-denoising-step statistics and eval images *look like* a toy-world
Flow-GRPO vs GRPO-Guard A/B pair (shapes from TOYWORLD.md's measured tables), written through
the real write path (``StoreRecorder``, ``lifecycle``). Nothing here is a training result.

Usage: ``python -m tests.app.synthetic --data-dir DIR [--steps 120] [--benchmark-steps 5000]``.
"""

from __future__ import annotations

import argparse
import io
import math
import os

import numpy as np

from grpo_guard.config import RunConfig
from grpo_guard.training.recording import Sample, StepStat

N_J = 9  # trained denoising steps (10 steps x 0.99 on the toy backbone)
PROMPTS = ["a red circle on a blue background", "a green square on a yellow background",
           "a blue triangle on a white background", "a yellow circle on a black background"]
SEEDS = [0, 1]
PALETTE = {"red": (220, 38, 38), "green": (22, 163, 74), "blue": (37, 99, 235), "yellow": (234, 179, 8),
           "white": (245, 245, 245), "black": (20, 20, 20)}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def curves(algorithm: str, step: int, n_steps: int) -> tuple[float, float]:
    """(proxy, gold) at ``step``: both rise; the baseline's gold peaks mid-run then falls,
    Guard's keeps most of its gain (the paper's Figure 1 shape)."""
    t = step / max(1, n_steps - 1)
    proxy = 0.45 + 0.45 * _sigmoid(8 * (t - 0.3)) * (0.93 if algorithm.endswith("guard") else 1.0)
    if algorithm.endswith("guard"):
        gold = 0.62 + 0.12 * _sigmoid(10 * (t - 0.25)) - 0.01 * max(0.0, t - 0.7)
    else:
        gold = 0.62 + 0.10 * _sigmoid(10 * (t - 0.2)) - 0.30 * max(0.0, t - 0.45) ** 1.3
    return proxy, gold


def step_stats(algorithm: str, step: int, n_steps: int, rng: np.random.Generator) -> list[StepStat]:
    """Per-denoising-step rows: the baseline's ratio drifts left toward low noise and its upper
    clip never acts; Guard's normalized ratio is centred with step-flat clipping."""
    t = step / max(1, n_steps - 1)
    guard = algorithm.endswith("guard")
    rows = []
    for j in range(N_J):
        sigma = 1.0 - j / 10
        dt = 0.1 * (1.4 - 0.8 * j / N_J)
        drift = -(9e-5 + 5e-3 * (j / (N_J - 1)) ** 2) * (0.3 + 0.7 * t)
        noise = rng.normal(0, 1, 8)
        r_m1 = drift + 2e-5 * noise[0]
        r_std = 2.5e-4 * (1 + 3 * j / N_J) * (1 + 0.2 * noise[1] ** 2)
        rhat_m1 = 1e-5 * noise[2]
        rhat_std = 2.5e-4 * (1 + 0.05 * noise[3])
        if guard:
            pos, neg = 0.45 + 0.03 * noise[4], 0.47 + 0.03 * noise[5]
            gnorm = (1.0 + 0.12 * j) * (1 + 0.05 * noise[6])
        else:
            pos = max(0.0, 0.02 + 0.06 * (1 - j / N_J) + 0.01 * noise[4])
            neg = min(1.0, 0.05 + 0.73 * (j / (N_J - 1)) ** 1.5 + 0.02 * noise[5])
            gnorm = (1.0 + 22.0 * (j / (N_J - 1)) ** 2) * (1 + 0.05 * noise[6])
        stats = {"r_mean_minus_1": r_m1, "r_std": r_std, "rhat_mean_minus_1": rhat_m1, "rhat_std": rhat_std,
                 "logr_mean": math.log1p(r_m1), "logr_std": r_std, "logrhat_mean": rhat_m1, "logrhat_std": rhat_std,
                 "pos_adv_clipped": pos, "neg_adv_clipped": neg, "clip_high": pos * 1.1, "clip_low": neg * 1.05,
                 "grad_zeroed_frac": pos + neg, "grad_norm_v": gnorm * (1 + t), "approx_kl": 0.5 * r_m1 ** 2,
                 "bias": -drift, "drift_rms": abs(drift) ** 0.5 * 1e-1}
        rows.append(StepStat(step=step, denoise_index=j, sigma=sigma, dt=dt, stats=stats))
    return rows


def scalars(algorithm: str, step: int, n_steps: int, rng: np.random.Generator, lr: float) -> dict[str, float]:
    proxy, _ = curves(algorithm, step, n_steps)
    n = rng.normal(0, 1, 6)
    return {"reward/total/mean": proxy + 0.02 * n[0], "reward/total/std": 0.12 * (1.1 - proxy / 2) + 0.01 * abs(n[1]),
            "reward/toy_fg_share/mean": proxy + 0.02 * n[0], "reward/toy_fg_share/std": 0.1, "zero_std_ratio": max(0.0, 0.08 * (1 - proxy) + 0.01 * n[2]),
            "adv_abs_mean": 0.8 + 0.02 * n[3], "policy_loss": 0.01 * n[4], "kl": 1e-4 * step * (1 + 0.1 * n[5]),
            "grad_norm": 0.5 + 0.1 * abs(n[5]), "lr": lr}


def image(prompt: str, seed: int, damage: float) -> bytes:
    """A 32x32 PNG of the prompt's shape; ``damage`` in [0, 1] floods it with the foreground
    colour and adds stripes (what over-optimizing a foreground-share proxy does)."""
    from PIL import Image

    words = prompt.split()
    fg, shape, bg = PALETTE[words[1]], words[2], PALETTE[words[5]]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    cx, cy = rng.uniform(13, 19, 2)
    r = rng.uniform(7, 10) * (1 + 0.8 * damage)
    if shape == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(xx - cx) <= 0.85 * r) & (abs(yy - cy) <= 0.85 * r)
    else:
        frac = (yy - (cy - r)) / (2 * r)
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= frac * r)
    img = np.empty((32, 32, 3), np.float32)
    img[:] = bg
    img[mask] = fg
    if damage > 0:
        img = (1 - 0.6 * damage) * img + 0.6 * damage * np.array(fg, np.float32)
        img[:, ::4] = img[:, ::4] * (1 - 0.5 * damage)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_run(algorithm: str, n_steps: int, *, eval_every: int = 10, ckpt_every: int = 40, name: str | None = None,
             pair_id: str | None = None, tags: tuple[str, ...] = ("synthetic",), finish: str | None = "succeeded",
             with_images: bool = True, seed: int = 0) -> int:
    """Create one run and write ``n_steps`` steps of synthetic rows; returns its id."""
    from grpo_guard.store import lifecycle, queries
    from grpo_guard.store.recorder import StoreRecorder

    cfg = RunConfig.from_dict({"algorithm": algorithm, "epochs": n_steps, "eval_every": eval_every,
                               "checkpoint_every": ckpt_every, "eval_seeds": SEEDS, "eval_prompts": PROMPTS})
    rid = queries.create_run(cfg, name=name, tags=tags, pair_id=pair_id)
    claim = lifecycle.claim_run(rid, worker_host="synthetic", worker_gpu=None)
    rng = np.random.default_rng(seed + rid)
    rec = StoreRecorder(rid, lease=claim.lease, attempt=claim.attempt, background=False, max_buffer=10**7)
    rec.log_line(f"SYNTHETIC run: {algorithm}, {n_steps} steps (tests/app/synthetic.py, not a training result)")
    peak = None
    for step in range(n_steps):
        rec.log_scalars(step, scalars(algorithm, step, n_steps, rng, cfg.learning_rate))
        rec.log_step_stats(step_stats(algorithm, step, n_steps, rng))
        if step % eval_every == 0 or step == n_steps - 1:
            proxy, gold = curves(algorithm, step, n_steps)
            proxy += 0.005 * rng.normal()
            gold += 0.004 * rng.normal()
            rec.log_scalars(step, {"eval/proxy": proxy, "eval/gold": gold, "eval/toy_alignment": gold + 0.05,
                                   "eval/toy_fidelity": gold - 0.05})
            peak = gold if peak is None else max(peak, gold)
            damage = 0.0 if algorithm.endswith("guard") else max(0.0, min(1.0, (peak - gold) * 4))
            if with_images:
                for p in PROMPTS:
                    for sd in SEEDS:
                        rec.log_sample(Sample(step=step, prompt=p, seed=sd, image=image(p, sd, damage),
                                              scores={"toy_fg_share": proxy}, proxy=proxy, gold=gold))
            rec.log_line(f"eval at step {step}: proxy {proxy:.4f} gold {gold:.4f}")
        if step and (step % ckpt_every == 0 or step == n_steps - 1):
            path = os.path.join(rec.checkpoint_dir(), f"ckpt_{step:06d}.pt")
            with open(path, "wb") as fh:
                fh.write(b"SYNTHETIC checkpoint placeholder\n")
            with open(path[:-3] + ".json", "w") as fh:
                fh.write('{"synthetic": true}\n')
            rec.log_checkpoint(step, path, {"synthetic": True})
        rec.set_progress(step + 1, n_steps)
        if step % 500 == 499:
            rec.flush()
    rec.close()
    if finish == "failed":
        lifecycle.finish_run(rid, claim.lease, finish, error="SYNTHETIC failure: policy loss became NaN at step "
                             f"{n_steps - 1}", traceback='Traceback (most recent call last):\n  File "trainer.py", '
                             'line 1, in train\nFloatingPointError: SYNTHETIC: non-finite loss')
    elif finish:
        lifecycle.finish_run(rid, claim.lease, finish)
    return rid


def make_ab_pair(n_steps: int, **kw) -> tuple[int, int]:
    import uuid

    pair = uuid.uuid4().hex[:12]
    a = make_run("flow_grpo", n_steps, name="toy A/B [flow_grpo]", pair_id=pair, **kw)
    b = make_run("grpo_guard", n_steps, name="toy A/B [grpo_guard]", pair_id=pair, **kw)
    return a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--benchmark-steps", type=int, default=0, help="also add one long run without images")
    args = ap.parse_args()
    os.environ["GG_DATA_DIR"] = os.path.abspath(args.data_dir)
    from grpo_guard.store import db

    db.verify_schema()
    ids = make_ab_pair(args.steps)
    make_run("grpo_guard", 30, name="guard seed 1 (running)", finish=None, tags=("synthetic", "seed1"), seed=1)
    failed = make_run("flow_grpo", 12, name="lr sweep 3e-3", finish="failed", tags=("synthetic", "sweep"), with_images=False)
    if args.benchmark_steps:
        make_run("flow_grpo", args.benchmark_steps, name=f"long run ({args.benchmark_steps} steps)", eval_every=50,
                 ckpt_every=1000, with_images=False)
    print("synthetic runs:", ids, failed)


if __name__ == "__main__":
    main()

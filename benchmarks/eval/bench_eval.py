"""Images per second of ``grpo-guard eval``'s GenEval path against the bare scorer loop on the
same images.

Both score the same precomputed images with the same GenEval scorer (detector at mmdet's test
scale + CLIP colours + rules), batch 16:

- bare: ``GenEvalReward.details(images[a:a+16], prompts[a:a+16])`` in a loop, nothing else;
- eval: ``grpo_guard.evaluation.runner.run_stored`` (what ``grpo-guard eval`` and the worker
  run) with sampling replaced by handing out those images: scoring, PNGs to the artifact store,
  per-prompt results and the ``evaluations`` row.

Weights: the real ``facebook/mask2former-swin-small-coco-instance`` + ``openai/clip-vit-large-patch14``
when both are in the HF cache (or GG_REWARD_GENEVAL_DETECTOR_PATH / _CLIP_PATH), else the tiny random
ones of ``grpo_guard.rewards.testing`` (say which in the figures you quote).

    python benchmarks/eval/bench_eval.py [--images 64] [--size 512] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Photo-like (smooth, PNG-compressible like real samples) uint8 images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(1, 6, (3, 2))
        ph = rng.uniform(0, 6.3, 3)
        img = np.stack([np.sin(f[c, 0] * x * 6.3 + f[c, 1] * y * 6.3 + ph[c]) for c in range(3)], -1)
        img += rng.normal(0, 0.05, img.shape)
        out[i] = np.clip((img * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    return out


class Handout:
    """Stands in for a backbone: 'decodes' latents that carry image indices into the images."""

    def __init__(self, images):
        self.images = images
        self.next = 0

    def sigmas(self, *a):
        import torch
        return torch.linspace(1, 0, 2)

    def latent_shape(self, resolution):
        return (1,)

    def decode(self, latents):
        out = self.images[self.next:self.next + len(latents)]
        self.next += len(latents)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("GG_BENCH_THREADS", "1"))))
    from grpo_guard.config import RunConfig
    from grpo_guard.evaluation import runner
    from grpo_guard.evaluation.benchmarks import get_benchmark
    from grpo_guard.evaluation.request import EvalRequest, base_ref
    from grpo_guard.prompts.prompt import Prompt
    from grpo_guard.rewards import build_reward
    from grpo_guard.store import db

    tmp = tempfile.mkdtemp(prefix="gg-bench-eval-")
    os.environ["GG_DATA_DIR"] = tmp
    weights = "real (HF cache)"
    if not (os.environ.get("GG_REWARD_GENEVAL_DETECTOR_PATH") and os.environ.get("GG_REWARD_GENEVAL_CLIP_PATH")):
        try:
            build_reward("geneval")
        except Exception:  # noqa: BLE001 - not cached: tiny random weights
            from grpo_guard.rewards.testing import tiny_clip_dir, tiny_mask2former_dir

            os.environ["GG_REWARD_GENEVAL_DETECTOR_PATH"] = tiny_mask2former_dir(tmp)
            os.environ["GG_REWARD_GENEVAL_CLIP_PATH"] = tiny_clip_dir(tmp)
            weights = "tiny random (grpo_guard.rewards.testing)"
    db.upgrade()
    fams = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
            {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]},
            {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}]},
            {"tag": "position", "include": [{"class": "bench", "count": 1},
                                            {"class": "dog", "count": 1, "position": ["left of", 0]}]}]
    ipp = 4
    n_prompts = max(1, args.images // ipp)
    prompts = [Prompt(f"prompt {i}", fams[i % len(fams)]) for i in range(n_prompts)]
    images = smooth_images(n_prompts * ipp, args.size)
    flat = [p for p in prompts for _ in range(ipp)]
    scorer = build_reward("geneval", score="strict", device=args.device)
    scorer.details(images[:2], flat[:2])  # load the weights outside the timings

    config = RunConfig.from_dict({})
    req = EvalRequest(get_benchmark("geneval"), base_ref(config), config, "bench", prompts, ipp)
    sample_ode = runner.__dict__.get("sample_ode")
    import grpo_guard.training.rollout as rollout

    real_sample = rollout.sample_ode
    rollout.sample_ode = lambda bb, ps, noise, *a, **k: noise[:len(ps)]
    results = {"bare": [], "eval": []}
    try:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for a in range(0, len(images), 16):
                scorer.details(images[a:a + 16], flat[a:a + 16])
            results["bare"].append(len(images) / (time.perf_counter() - t0))
            from grpo_guard.store import evaluations as store

            eid = store.create_evaluation("geneval", req.model, req.protocol(), status="running")
            runner.load_backbone = lambda request, device=None: Handout(images)
            t0 = time.perf_counter()
            runner.run_stored(eid, req, scorers={"geneval": scorer})
            results["eval"].append(len(images) / (time.perf_counter() - t0))
    finally:
        rollout.sample_ode = real_sample
    del sample_ode
    bare, ev = max(results["bare"]), max(results["eval"])
    out = {"weights": weights, "device": args.device, "images": len(images), "size": args.size,
           "bare_images_per_s": round(bare, 3), "eval_images_per_s": round(ev, 3),
           "eval_over_bare": round(ev / bare, 3), "torch_threads": torch.get_num_threads(),
           "load_1min": os.getloadavg()[0]}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

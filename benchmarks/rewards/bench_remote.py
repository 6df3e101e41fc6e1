"""Overhead of remote scoring (the reference reward server on 127.0.0.1) against in-process
scoring, for one toy epoch's images: 64 rendered toy scenes (32×32), scored by ``toy_fg_share``
(cheap, so the protocol's own cost shows) and ``toy_classifier_confidence`` (a learned scorer).

    python benchmarks/rewards/bench_remote.py [--images 64] [--repeats 7] [--batch-size 64]
    python benchmarks/rewards/bench_remote.py --epoch   # whole toy epochs (bench_epoch.py's config)

Prints one JSON line per reward: median seconds in-process, through the server, the overhead,
and that the scores were identical (they must be: PNG is lossless). ``--epoch`` trains 3 toy
epochs of 64 images (8 prompts × 8) with ``toy_fg_share`` in-process and through the server
(declared in ``GG_REWARD_SERVERS``) and prints each arm's ``time/reward`` and ``time/epoch`` of
epochs 2–3 (epoch 1 warms up), and whether every logged reward mean was identical."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import numpy as np


def bench_epochs(batch_size: int) -> None:
    import tempfile

    from benchmarks.trainer.bench_epoch import bench_config
    from grpo_guard.rewards import load_extras
    from grpo_guard.rewards.server import make_server
    from grpo_guard.training.recording import MemoryControl, MemoryRecorder
    from grpo_guard.training.trainer import train

    server = make_server("toy_fg_share", "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["GG_REWARD_SERVERS"] = json.dumps({"servers": {"toy_remote": {
        "url": server.url, "reward": "toy_fg_share", "batch_size": batch_size}}})
    load_extras(reload=True)
    out = {}
    try:
        for name in ("toy_fg_share", "toy_remote"):
            cfg = bench_config("grpo_guard", None, 3).with_overrides({"rewards": {name: 1.0}})
            with tempfile.TemporaryDirectory() as d:
                rec = MemoryRecorder(d)
                train(cfg, rec, MemoryControl())
            out[name] = {k: [rec.scalars[(e, k)] for e in (2, 3)] for k in ("time/reward", "time/epoch")}
            out[name]["means"] = [rec.scalars[(e, f"reward/{name}/mean")] for e in (1, 2, 3)]
    finally:
        server.shutdown()
        server.server_close()
    a, b = out["toy_fg_share"], out["toy_remote"]
    print(json.dumps({"images_per_epoch": 64, "batch_size": batch_size,
                      "in_process_reward_s": [round(x, 4) for x in a["time/reward"]],
                      "remote_reward_s": [round(x, 4) for x in b["time/reward"]],
                      "in_process_epoch_s": [round(x, 2) for x in a["time/epoch"]],
                      "remote_epoch_s": [round(x, 2) for x in b["time/epoch"]],
                      "identical_reward_means": a["means"] == b["means"],
                      "loadavg": [round(x, 2) for x in os.getloadavg()]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64, help="images per request")
    ap.add_argument("--epoch", action="store_true", help="whole toy epochs through the trainer")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.epoch:
        return bench_epochs(args.batch_size)
    from grpo_guard.rewards import build_reward
    from grpo_guard.rewards.remote import RemoteReward
    from grpo_guard.rewards.server import make_server
    from grpo_guard.rewards.servers import ServerSpec
    from grpo_guard.toyworld.data import render_batch, sample_scenes

    scenes = sample_scenes(np.random.default_rng(0), args.images)
    images = render_batch(scenes)
    prompts = [f"a {s.fg} {s.shape} on a {s.bg} background" for s in scenes]
    for name in ("toy_fg_share", "toy_classifier_confidence"):
        local = build_reward(name)
        server = make_server(name, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        remote = RemoteReward(name, ServerSpec(name, server.url, name, batch_size=args.batch_size))
        try:
            same = bool(np.array_equal(local(images, prompts), remote(images, prompts)))  # also warms both up
            t_local, t_remote = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                local(images, prompts)
                t_local.append(time.perf_counter() - t)
                t = time.perf_counter()
                remote(images, prompts)
                t_remote.append(time.perf_counter() - t)
        finally:
            server.shutdown()
            server.server_close()
        a, b = statistics.median(t_local), statistics.median(t_remote)
        print(json.dumps({"reward": name, "images": args.images, "batch_size": args.batch_size,
                          "in_process_s": round(a, 5), "remote_s": round(b, 5), "overhead_s": round(b - a, 5),
                          "overhead_ms_per_image": round(1000 * (b - a) / args.images, 3), "identical": same,
                          "loadavg": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()

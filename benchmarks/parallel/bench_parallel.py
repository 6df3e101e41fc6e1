"""Memory per rank and step time of ``parallelism: fsdp`` against ``ddp``: full fine-tuning of a tiny
SD3 pipeline whose transformer is made large enough (12 blocks of width 384, ~24 M parameters) that
its weights, gradients and AdamW moments dominate a rank's tensors, on 2 gloo processes on the CPU.

What is measured, per rank, with the real trainer (``grpo_guard.training.trainer.train``):

- **model state**: bytes of the tensors this rank holds for the trained transformer after training —
  its parameters (a DTensor counts its local shard), AdamW's moments and the EMA — plus the gradients
  as they stand at the update's peak (one per trainable parameter, sharded like it: gradients are
  freed after each optimizer step, so they are counted from the parameters, not read afterwards).
  Exact sums of tensor sizes, not an allocator's view.
- **peak RSS**: the process's peak resident memory (``VmHWM``): everything, imports, the frozen text
  encoders and VAE and the communication buffers included, so only its difference between ddp and
  fsdp means something (the single process also built the pipeline).
- **update s**, **epoch s**: median over epochs 2.. of the trainer's ``time/update`` and ``time/epoch``
  (epoch 1 warms up). One process with the same config is the baseline.

Usage: ``python benchmarks/parallel/bench_parallel.py [--epochs 4] [--out benchmarks/parallel/results.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

CONFIG = dict(backbone="sd3", resolution=32, algorithm="grpo_guard", lora_rank=0, group_size=2, prompts_per_epoch=2,
              num_steps=3, eval_num_steps=2, sample_batch_size=2, train_batch_size=4, seed=3, learning_rate=1e-4,
              ema=True, ema_every=1, checkpoint_every=1000, eval_every=1000, gold=[],
              prompts=["a red circle on a blue background", "a green square on a white background"],
              eval_prompts=["a red circle on a blue background"], eval_seeds=[0])


def build_pipeline(out: str) -> str:
    """The tiny SD3 pipeline (``grpo_guard.models.testing``) with a 12-block, width-384 transformer."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from grpo_guard.models.testing import tiny_sd3_pipeline
    from grpo_guard.toyworld.pipeline import eval_all

    comps = dict(tiny_sd3_pipeline(0).components)
    torch.manual_seed(0)
    comps["transformer"] = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=12, attention_head_dim=64,
        num_attention_heads=6, joint_attention_dim=64, caption_projection_dim=384, pooled_projection_dim=64,
        pos_embed_max_size=8)
    path = os.path.join(out, "sd3_bench")
    eval_all(StableDiffusion3Pipeline(**comps)).save_pretrained(path)
    return path


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def model_state_bytes(run) -> dict[str, int]:
    params = [p for p in run.backbone.transformer.parameters()]
    opt = [v for st in run.optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.ndim]
    return {"parameters": sum(_local_bytes(p) for p in params),
            "gradients": sum(_local_bytes(p) for p in run.params),
            "optimizer": sum(_local_bytes(v) for v in opt),
            "ema": sum(_local_bytes(s) for s in run.ema.shadow) if run.ema is not None else 0}


def peak_rss() -> int:
    """This process's peak resident bytes (``VmHWM``; ``ru_maxrss`` would carry the parent's peak
    into the spawned ranks)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def train_once(cfg_dict: dict, out: str) -> dict:
    import grpo_guard.training.trainer as trainer
    from grpo_guard import metrics as M
    from grpo_guard.config import RunConfig
    from grpo_guard.training.recording import MemoryControl, MemoryRecorder

    captured = {}
    original = trainer.build_run

    def capture(*a, **kw):
        captured["run"] = original(*a, **kw)
        return captured["run"]

    trainer.build_run = capture
    try:
        rec = MemoryRecorder(out)
        trainer.train(RunConfig.from_dict(cfg_dict), rec, MemoryControl(), device="cpu")
    finally:
        trainer.build_run = original
    run = captured["run"]
    epochs = cfg_dict["epochs"]
    upd = [rec.scalars[(e, M.TIME_UPDATE)] for e in range(2, epochs + 1) if (e, M.TIME_UPDATE) in rec.scalars]
    ep = [rec.scalars[(e, M.TIME_EPOCH)] for e in range(2, epochs + 1) if (e, M.TIME_EPOCH) in rec.scalars]
    state = model_state_bytes(run)
    return {**state, "model_state": sum(state.values()), "update_s": statistics.median(upd) if upd else None,
            "epoch_s": statistics.median(ep) if ep else None,  # rank 0 alone records the times
            "peak_rss": peak_rss(),
            "trainable_parameters": sum(p.numel() for p in run.backbone.transformer.parameters())}


def _rank(rank: int, world: int, init: str, out: str, cfg_json: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        res = train_once(json.loads(cfg_json), os.path.join(out, f"ckpt{rank}"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
            json.dump(res, fh)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def spawn(cfg: dict, world: int, out: str) -> list[dict]:
    import torch.multiprocessing as mp

    os.makedirs(out, exist_ok=True)
    mp.spawn(_rank, args=(world, os.path.join(out, "init"), out, json.dumps(cfg)), nprocs=world, join=True)
    return [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                     "load_avg_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as d:
        cfg = {**CONFIG, "model": build_pipeline(d), "epochs": args.epochs}
        results["single"] = train_once(cfg, os.path.join(d, "single"))
        for par in ("ddp", "fsdp"):
            results[par] = spawn({**cfg, "num_gpus": 2, "parallelism": par}, 2, os.path.join(d, par))
    results["load_avg_at_end"] = os.getloadavg()[0]
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    mib = 1 << 20
    print(f"transformer: {results['single']['trainable_parameters'] / 1e6:.1f} M parameters, full fine-tuning")
    print(f"{'':12} {'params':>8} {'grads':>8} {'AdamW':>8} {'EMA':>8} {'state':>8} {'peak RSS':>9} "
          f"{'update s':>9} {'epoch s':>8}")
    rows = [("1 process", results["single"])] + [(f"{p} rank {r}", x) for p in ("ddp", "fsdp")
                                                  for r, x in enumerate(results[p])]
    for name, x in rows:
        print(f"{name:12} {x['parameters'] / mib:8.1f} {x['gradients'] / mib:8.1f} {x['optimizer'] / mib:8.1f} "
              f"{x['ema'] / mib:8.1f} {x['model_state'] / mib:8.1f} {x['peak_rss'] / mib:9.0f} "
              + (f"{x['update_s']:9.3f} {x['epoch_s']:8.3f}" if x["update_s"] is not None else f"{'-':>9} {'-':>8}"))
    print("(MiB; the model state is a rank's parameters + gradients + AdamW moments + EMA)")


if __name__ == "__main__":
    main()

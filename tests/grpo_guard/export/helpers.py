"""Checkpoints for the export tests: a base model (toy, tiny random SD3 or FLUX) with a LoRA or
full fine-tuning whose weights are moved away from the base (B != 0), and an EMA that differs
from the raw weights, saved with ``save_checkpoint`` as training would."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.training.checkpoint import Checkpoint, save_checkpoint


def base_model(kind: str, root: str) -> str:
    from grpo_guard.models.testing import tiny_flux_pipeline_dir, tiny_sd3_pipeline_dir

    if kind == "toy":
        return ""
    path = os.path.join(root, f"tiny_{kind}")
    if os.path.isdir(path):
        return path
    return (tiny_sd3_pipeline_dir if kind == "sd3" else tiny_flux_pipeline_dir)(root)


def make_config(kind: str, rank: int, model: str, **extra) -> RunConfig:
    d = {"backbone": kind, "model": model, "lora_rank": rank, "lora_alpha": 2.0 * rank if rank else 1.0,
         "eval_num_steps": 2, **extra}
    if kind != "toy":
        d["resolution"] = 32
    return RunConfig.from_dict(d)


def make_checkpoint(config: RunConfig, directory: str, step: int = 5, *, ema: bool = True, seed: int = 1,
                    meta: dict | None = None) -> str:
    """Save a checkpoint of ``config``'s model with perturbed trainable weights; returns its path."""
    from grpo_guard.models import build_backbone

    bb = build_backbone(config, device="cpu")
    torch.manual_seed(seed)  # peft draws LoRA A from the global generator
    bb.add_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
    g = torch.Generator().manual_seed(seed)
    scale = 0.1 if config.lora_rank else 0.01  # tiny SD3/FLUX: EMA and raw images then differ by >= 9/255
    with torch.no_grad():
        for p in bb.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    avg = ([p.detach().clone() + scale * 0.5 * torch.randn(p.shape, generator=g) for p in bb.trainable_parameters()]
           if ema else None)
    ck = Checkpoint(step=step, config=config, trainable=bb.trainable_state_dict(), ema=avg, optimizer=None)
    return save_checkpoint(directory, ck, meta or {"reason": "final"})


EVALS = {0: (0.1, 0.5), 5: (0.3, 0.625), 10: (0.5, 0.375)}  # step: (proxy, gold)


def _png(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def fill_run(root: str, config: RunConfig, real: bool = True) -> int:
    """A finished run: eval values at 0/5/10, the alarm at 10, two eval images at 5, checkpoints
    at 2 (pruned from disk), 5 (best gold) and 10 (``real``: loadable ones, else placeholders)."""
    from grpo_guard.store import queries
    from grpo_guard.store.recorder import StoreRecorder
    from grpo_guard.training.recording import Sample

    run_id = queries.create_run(config, name="export-me")
    rec = StoreRecorder(run_id, background=False)
    for step, (proxy, gold) in EVALS.items():
        rec.log_scalars(step, {M.EVAL_PROXY: proxy, M.EVAL_GOLD: gold})
    rec.log_scalars(10, {M.ALARM_ONSET: 10.0})
    for seed in (0, 1):
        rec.log_sample(Sample(step=5, prompt="a red circle", seed=seed, image=_png(seed), proxy=0.3, gold=0.6))
    d = rec.checkpoint_dir()
    for step in (2, 5, 10):
        path = make_checkpoint(config, d, step=step, seed=step) if real and step != 2 else _copy_as(d, step)
        rec.log_checkpoint(step, path, {"reason": "periodic", "best_step": 5})
    os.remove(os.path.join(d, "ckpt_000002.pt"))  # keep_checkpoints pruned it
    rec.set_progress(10, config.epochs)  # stopped after epoch 10
    rec.close()
    return run_id


def _copy_as(directory: str, step: int) -> str:
    path = os.path.join(directory, f"ckpt_{step:06d}.pt")
    with open(path, "wb") as fh:
        fh.write(b"pruned soon")
    return path

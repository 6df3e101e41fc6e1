"""Checkpoints for the export tests: a base model (toy, tiny random SD3 or FLUX) with a LoRA or
full fine-tuning whose weights are moved away from the base (B != 0), and an EMA that differs
from the raw weights, saved with ``save_checkpoint`` as training would."""

from __future__ import annotations

import os

import torch

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
    bb.add_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
    g = torch.Generator().manual_seed(seed)
    scale = 0.05 if config.lora_rank else 0.01
    with torch.no_grad():
        for p in bb.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    avg = ([p.detach().clone() + scale * 0.5 * torch.randn(p.shape, generator=g) for p in bb.trainable_parameters()]
           if ema else None)
    ck = Checkpoint(step=step, config=config, trainable=bb.trainable_state_dict(), ema=avg, optimizer=None)
    return save_checkpoint(directory, ck, meta or {"reason": "final"})

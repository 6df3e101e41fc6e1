"""A one-epoch toy run shared by the plugin and reward-server tests (the shipped toy backbone;
groups of 2 for 2 prompts, 4 denoising steps, one eval image: about 3 s on a busy 2-core machine)."""

from __future__ import annotations

from grpo_guard.config import RunConfig
from grpo_guard.training.recording import MemoryControl, MemoryRecorder

TOY = dict(epochs=1, group_size=2, prompts_per_epoch=2, num_steps=4, eval_every=1, eval_num_steps=4, eval_seeds=[0],
           checkpoint_every=1, lora_rank=4, lora_alpha=8.0, train_batch_size=4, gold=["toy_alignment"],
           eval_prompts=["a red circle on a blue background"])


def toy_config(**kw) -> RunConfig:
    return RunConfig.from_dict({**TOY, **kw})


def toy_run(cfg: RunConfig, ckpt_dir: str, control=None, **kw):
    """(TrainResult, MemoryRecorder) of ``cfg`` with rewards built from the registry by name."""
    import torch

    from grpo_guard.training.trainer import train

    torch.set_num_threads(1)
    recorder = MemoryRecorder(ckpt_dir)
    return train(cfg, recorder, control or MemoryControl(), **kw), recorder

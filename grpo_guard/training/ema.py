"""Exponential moving average of the trainable weights (ALGORITHM.md §3.4: decay 0.9, updated
every 8 optimizer steps). Used for evaluation and checkpoints only, never for rollouts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """Shadow copies of ``params``; ``update`` blends them in, ``swapped`` lends them out."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the context the live parameters hold the EMA weights; restored on exit."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)

    def state(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.shadow]

    def load(self, shadow: list[torch.Tensor]) -> None:
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow, strict=True)):
            raise ValueError("the EMA weights in the checkpoint do not match the model's trainable parameters")
        from grpo_guard.training.sharding import like  # whole saved tensors -> this rank's shard (fsdp)

        self.shadow = [like(s, p).clone() for s, p in zip(shadow, self.params, strict=True)]

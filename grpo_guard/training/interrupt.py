"""Stopping a run for a shutdown (Ctrl-C or SIGTERM on the worker) as soon as its state can be
checkpointed without losing or repeating an epoch.

A ``Control`` may offer ``interrupted() -> bool``: a cheap, local check (no database read) that
the process is being shut down. The trainer asks it at every point where a checkpoint is exact:

- at the start of an epoch (with the stop-request poll);
- between the denoising steps of the epoch's sampling, and after scoring, before the update: the
  weights are still the previous epoch's;
- between the update's micro-batches, when the pre-update state was snapshotted
  (:class:`PreUpdateSnapshot`; only for trainable sets small enough to copy each epoch): the
  snapshot is put back, so the checkpoint is again the previous epoch's;
- after the epoch is recorded, before or during its evaluation (between denoising steps): the
  epoch is checkpointed and the evaluation it owes runs first when the run resumes
  (``TrainerState.last_eval`` says it is missing; eval images already stored are overwritten).

In each case the trainer ends ``cancelled`` at the checkpointed epoch; the worker, which knows it
was a shutdown and not the user's stop, marks the run ``interrupted``.

With several ranks (data parallel; the worker's ranks read its stop file, ``worker.ranks``): each
rank asks its own control between its denoising steps and the ranks agree right after sampling
(any rank's cut stops them all, since their chunk counts differ no collective runs inside it);
before the update and between its micro-batches rank 0's answer is broadcast (every rank puts
its snapshot back); in its eval and after recording rank 0 asks alone and then answers the other
ranks' next stop poll with a stop. Rank 0 alone checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from grpo_guard.training.train_state import TrainerState

# Trainable parameters up to this many elements are snapshotted before each update (a copy of
# weights, optimizer moments and EMA: ~4x their size), so a shutdown can cut the update short.
SNAPSHOT_MAX_NUMEL = 50_000_000


class Interrupted(Exception):
    """Raised between the denoising steps of sampling or eval, or between the update's
    micro-batches, when a shutdown asks to stop; the trainer catches it and checkpoints."""


UpdateInterrupted = Interrupted  # the update's name for it


def check(should_stop: Callable[[], bool] | None, where: str) -> None:
    """Raise :class:`Interrupted` when ``should_stop`` says so (None: never)."""
    if should_stop is not None and should_stop():
        raise Interrupted(f"interrupted {where}")


def interrupt_requested(control: Any) -> bool:
    """Whether ``control`` reports a shutdown (controls without ``interrupted`` never do)."""
    check = getattr(control, "interrupted", None)
    return bool(callable(check) and check())


class PreUpdateSnapshot:
    """Weights, optimizer state, EMA and trainer state as they were before an update."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, ema: Any,
                 state: TrainerState) -> None:
        self.params = [p.detach().clone() for p in params]
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.ema = ema.state() if ema is not None else None
        self.state = copy.deepcopy(state)

    @classmethod
    def take(cls, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, ema: Any,
             state: TrainerState) -> PreUpdateSnapshot | None:
        """A snapshot, or None when the trainable set is too large to copy every epoch."""
        if sum(p.numel() for p in params) > SNAPSHOT_MAX_NUMEL:
            return None
        return cls(params, optimizer, ema, state)

    @torch.no_grad()
    def restore(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, ema: Any,
                state: TrainerState) -> None:
        for p, saved in zip(params, self.params, strict=True):
            p.copy_(saved)
            p.grad = None
        optimizer.load_state_dict(self.optimizer)
        if ema is not None and self.ema is not None:
            ema.load(self.ema)
        for f in fields(TrainerState):
            setattr(state, f.name, getattr(self.state, f.name))

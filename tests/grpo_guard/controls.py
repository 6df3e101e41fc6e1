"""Control doubles shared by the trainer tests (single-process and data-parallel)."""

from __future__ import annotations

import os

from grpo_guard.training.recording import MemoryControl


class StopAfter(MemoryControl):
    """Asks to stop once ``k`` epochs have run (the trainer polls once per epoch)."""

    def __init__(self, k: int):
        super().__init__()
        self.k, self.polls = k, 0

    def stop_requested(self) -> bool:
        self.polls += 1
        return self.polls > self.k


class InterruptIn(MemoryControl):
    """Reports a shutdown (``interrupted()``, as a worker's control does) in epoch ``epoch``: at the
    trainer's first check of it, or, with ``after_record``, once ``recorder`` (set by the caller)
    holds that epoch's scalars. Once it has, the next stop poll stops too, like the worker's."""

    def __init__(self, epoch: int, *, after_record: bool = False):
        super().__init__()
        self.epoch, self.after_record, self.polls, self.fired = epoch, after_record, 0, False
        self.recorder = None

    def stop_requested(self) -> bool:
        self.polls += 1
        return self.fired

    def interrupted(self) -> bool:
        if self.polls >= self.epoch and not self.fired:
            self.fired = not self.after_record or any(step == self.epoch for step, _ in self.recorder.scalars)
        return self.fired


class StopFileAt(MemoryControl):
    """Every rank's control reads ``path`` as a worker's stop file (``worker.ranks``); the one with
    ``create_at`` (rank 0's) creates it at its stop poll of that epoch, which the other ranks wait
    on, so every rank finds it while sampling that epoch."""

    def __init__(self, path: str, create_at: int | None = None):
        super().__init__()
        self.path, self.create_at, self.polls, self.checks = path, create_at, 0, 0

    def stop_requested(self) -> bool:
        self.polls += 1
        if self.polls == self.create_at:
            open(self.path, "w").close()
            return False
        return self.interrupted()

    def interrupted(self) -> bool:
        self.checks += 1
        return os.path.exists(self.path)

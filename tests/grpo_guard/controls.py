"""Control doubles shared by the trainer tests (single-process and data-parallel)."""

from __future__ import annotations

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

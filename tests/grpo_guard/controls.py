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

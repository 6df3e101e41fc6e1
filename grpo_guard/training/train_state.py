"""What the trainer carries from epoch to epoch and writes into every checkpoint.

``TrainerState`` replaces the untyped dict the loop used to keep; ``Checkpoint.trainer`` still
stores it as a plain dict of numbers and lists (``to_dict``), the form every earlier checkpoint
has, so old checkpoints resume and new ones load with weights-only unpickling. Standard library
only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class EvalHistory:
    """Every evaluation so far, in order: the proxy and gold totals at each eval step."""

    step: list[int] = field(default_factory=list)
    proxy: list[float] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)

    def add(self, step: int, proxy: float, gold: float) -> None:
        self.step.append(step)
        self.proxy.append(proxy)
        self.gold.append(gold)

    def at(self, step: int) -> tuple[float, float] | None:
        """(proxy, gold) of the evaluation at ``step``, or None if that step was not evaluated."""
        if step not in self.step:
            return None
        i = self.step.index(step)
        return self.proxy[i], self.gold[i]


@dataclass
class TrainerState:
    """The loop's counters and eval history (everything besides weights, optimizer and EMA that a
    resume needs to log exactly what the uninterrupted run logs)."""

    optimizer_steps: int = 0          # since the start of the run (the EMA cadence counts these)
    history: EvalHistory = field(default_factory=EvalHistory)
    best_gold: float = -math.inf
    best_step: int = -1               # step of best_gold; its checkpoint is never pruned
    onset: int | None = None          # the over-optimisation alarm's step, once it fired
    last_eval: int = -1
    last_ckpt_step: int = -1

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint form: ``history`` as ``{"step": [...], "proxy": [...], "gold": [...]}``."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "history"}
        out["history"] = {"step": list(self.history.step), "proxy": list(self.history.proxy),
                          "gold": list(self.history.gold)}
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainerState:
        """Read a checkpoint's ``trainer`` dict, written by this class or by the loop's former
        dict; a key it lacks keeps its default and an unknown key is ignored."""
        known = {f.name for f in fields(cls)} - {"history"}
        state = cls(**{k: v for k, v in raw.items() if k in known})
        h = raw.get("history") or {}
        state.history = EvalHistory([int(s) for s in h.get("step", [])], [float(p) for p in h.get("proxy", [])],
                                    [float(g) for g in h.get("gold", [])])
        return state

"""How the trainer talks to the world: a ``Recorder`` (what happened) and a ``Control``
(what the user asks for). The trainer knows nothing of SQL, Celery or Gradio.

Implementations here: ``NullRecorder`` (CLI dry runs), ``MemoryRecorder`` and ``MemoryControl``
(tests), ``FolderRecorder`` (JSONL + PNG files under a directory, for ``grpo-guard train --out``).
The store-backed pair lives in ``grpo_guard.store.recorder``.

Natural keys (writes are idempotent on them, so a replayed step neither duplicates nor loses):
  scalars      (step, key)
  step_stats   (step, denoise_index)
  samples      (step, prompt, seed)
  checkpoints  (step)
Imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class StepStat:
    """Per-denoising-step statistics of one optimizer step (ALGORITHM.md §8).

    ``stats`` holds the floats of ``policy_loss(...).stats`` plus ``grad_norm_v`` and the
    schedule constants; ``sigma`` and ``dt`` are the step's σ_j and |dt_j|.
    """

    step: int
    denoise_index: int
    sigma: float
    dt: float
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Sample:
    """One eval image: ``image`` is PNG bytes; ``scores`` maps reward/evaluator name to value;
    ``proxy`` is the weighted proxy total and ``gold`` the mean of the gold evaluators.
    ``prompt_meta`` is the prompt's metadata (GenEval: tag, include, exclude), taken from a
    :class:`grpo_guard.prompts.Prompt` when not given."""

    step: int
    prompt: str
    seed: int
    image: bytes
    scores: dict[str, float] = field(default_factory=dict)
    proxy: float | None = None
    gold: float | None = None
    prompt_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompt_meta:
            self.prompt_meta = dict(getattr(self.prompt, "meta", None) or {})


@runtime_checkable
class Recorder(Protocol):
    """Where the trainer reports. Every method may buffer; ``flush`` makes it durable."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None: ...

    def log_step_stats(self, rows: list[StepStat]) -> None: ...

    def log_sample(self, sample: Sample) -> None: ...

    def log_checkpoint(self, step: int, path: str, meta: dict[str, Any] | None = None) -> None: ...

    def log_line(self, message: str, level: str = "info") -> None: ...

    def set_progress(self, step: int, total: int) -> None: ...

    def prune_after(self, step: int) -> None:
        """Resume from ``step``: drop every row with a larger step before writing again."""
        ...

    def checkpoint_dir(self) -> str:
        """Directory where the trainer writes checkpoint files for this run."""
        ...

    def flush(self) -> None: ...


@runtime_checkable
class Control(Protocol):
    """Polled by the trainer once per step. ``take_*`` clear the flag they report."""

    def stop_requested(self) -> bool: ...

    def take_sample_now(self) -> bool: ...

    def take_save_now(self) -> bool: ...


class MemoryControl:
    """Flags set by a test (or by a callback in the same process)."""

    def __init__(self) -> None:
        self.stop = False
        self.sample_now = False
        self.save_now = False

    def stop_requested(self) -> bool:
        return self.stop

    def take_sample_now(self) -> bool:
        hit, self.sample_now = self.sample_now, False
        return hit

    def take_save_now(self) -> bool:
        hit, self.save_now = self.save_now, False
        return hit


class NullControl(MemoryControl):
    """Never asks for anything."""


class MemoryRecorder:
    """Keeps everything in dicts keyed by the natural keys (idempotent like the store)."""

    def __init__(self, checkpoint_root: str | None = None) -> None:
        self.scalars: dict[tuple[int, str], float] = {}
        self.step_stats: dict[tuple[int, int], StepStat] = {}
        self.samples: dict[tuple[int, str, int], Sample] = {}
        self.checkpoints: dict[int, tuple[str, dict[str, Any]]] = {}
        self.lines: list[tuple[str, str]] = []
        self.progress: tuple[int, int] = (0, 0)
        self._ckpt_root = checkpoint_root
        self.flushes = 0

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.scalars[(step, k)] = float(v)

    def log_step_stats(self, rows: list[StepStat]) -> None:
        for r in rows:
            self.step_stats[(r.step, r.denoise_index)] = r

    def log_sample(self, sample: Sample) -> None:
        self.samples[(sample.step, sample.prompt, sample.seed)] = sample

    def log_checkpoint(self, step: int, path: str, meta: dict[str, Any] | None = None) -> None:
        self.checkpoints[step] = (path, dict(meta or {}))

    def log_line(self, message: str, level: str = "info") -> None:
        self.lines.append((level, message))

    def set_progress(self, step: int, total: int) -> None:
        self.progress = (step, total)

    def prune_after(self, step: int) -> None:
        self.scalars = {k: v for k, v in self.scalars.items() if k[0] <= step}
        self.step_stats = {k: v for k, v in self.step_stats.items() if k[0] <= step}
        self.samples = {k: v for k, v in self.samples.items() if k[0] <= step}
        self.checkpoints = {k: v for k, v in self.checkpoints.items() if k <= step}

    def checkpoint_dir(self) -> str:
        if self._ckpt_root is None:
            import tempfile

            self._ckpt_root = tempfile.mkdtemp(prefix="gg-ckpt-")
        return self._ckpt_root

    def flush(self) -> None:
        self.flushes += 1

    # conveniences for tests and the CLI
    def series(self, key: str) -> list[tuple[int, float]]:
        return sorted((s, v) for (s, k), v in self.scalars.items() if k == key)


class NullRecorder(MemoryRecorder):
    """Discards rows (keeps only progress and checkpoints); for dry runs."""

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_step_stats(self, rows: list[StepStat]) -> None:
        pass

    def log_sample(self, sample: Sample) -> None:
        pass


def _clean(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class FolderRecorder:
    """Appends JSON lines under ``out/`` and writes eval images as PNG files.

    Layout: ``scalars.jsonl``, ``step_stats.jsonl``, ``samples.jsonl`` + ``samples/*.png``,
    ``checkpoints.jsonl`` + ``checkpoints/``, ``log.txt``. Rows are buffered and appended on
    ``flush``; readers dedupe by natural key, last row wins (``read_jsonl``).
    """

    def __init__(self, out: str) -> None:
        self.out = out
        os.makedirs(os.path.join(out, "samples"), exist_ok=True)
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        self._buf: dict[str, list[dict[str, Any]]] = {}

    def _add(self, name: str, row: dict[str, Any]) -> None:
        self._buf.setdefault(name, []).append(row)

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._add("scalars", {"step": step, **{k: _clean(v) for k, v in values.items()}})

    def log_step_stats(self, rows: list[StepStat]) -> None:
        for r in rows:
            d = asdict(r)
            d["stats"] = {k: _clean(v) for k, v in r.stats.items()}
            self._add("step_stats", d)

    def log_sample(self, sample: Sample) -> None:
        safe = "".join(c if c.isalnum() else "_" for c in sample.prompt)[:60]
        rel = os.path.join("samples", f"{sample.step:06d}_{sample.seed}_{safe}.png")
        with open(os.path.join(self.out, rel), "wb") as fh:
            fh.write(sample.image)
        row = {"step": sample.step, "prompt": str(sample.prompt), "seed": sample.seed, "image": rel,
               "scores": sample.scores, "proxy": sample.proxy, "gold": sample.gold}
        if sample.prompt_meta:
            row["prompt_meta"] = sample.prompt_meta
        self._add("samples", row)

    def log_checkpoint(self, step: int, path: str, meta: dict[str, Any] | None = None) -> None:
        self._add("checkpoints", {"step": step, "path": path, "meta": meta or {}})

    def log_line(self, message: str, level: str = "info") -> None:
        with open(os.path.join(self.out, "log.txt"), "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level.upper():7s} {message}\n")

    def set_progress(self, step: int, total: int) -> None:
        with open(os.path.join(self.out, "progress.json"), "w") as fh:
            json.dump({"step": step, "total": total}, fh)

    def prune_after(self, step: int) -> None:
        self.flush()
        for name in ("scalars", "step_stats", "samples", "checkpoints"):
            path = os.path.join(self.out, f"{name}.jsonl")
            rows = [r for r in read_jsonl(path, dedupe=False) if r["step"] <= step]
            with open(path, "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)

    def checkpoint_dir(self) -> str:
        return os.path.join(self.out, "checkpoints")

    def flush(self) -> None:
        for name, rows in self._buf.items():
            if rows:
                with open(os.path.join(self.out, f"{name}.jsonl"), "a") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in rows)
        self._buf = {}


def read_jsonl(path: str, dedupe: bool = True) -> list[dict[str, Any]]:
    """Rows of a FolderRecorder file; with ``dedupe`` the last row per natural key wins."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not dedupe:
        return rows
    name = os.path.basename(path)
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        if name.startswith("step_stats"):
            return (r["step"], r["denoise_index"])
        if name.startswith("samples"):
            return (r["step"], r["prompt"], r["seed"])
        if name.startswith("scalars"):
            return (r["step"], tuple(sorted(k for k in r if k != "step")))
        return (r["step"],)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        out[key(r)] = r
    return list(out.values())

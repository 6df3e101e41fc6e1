"""Which checkpoint an export takes, and what its card says about it: read from the store for a
run id, or from a checkpoint's sidecar and run folder for ``--checkpoint PATH``. ``from_store``
imports no torch (``from_checkpoint`` reads a checkpoint folder and does).

Every failure is an ``ExportError`` with one sentence.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from grpo_guard import metrics as M


class ExportError(RuntimeError):
    """An export cannot be made; the message is one sentence saying why and what to do."""


@dataclass
class Chosen:
    """The checkpoint an export takes, and what the store knows around it."""

    path: str
    step: int
    reason: str  # "best gold" / "last" / "chosen"
    run_id: int | None = None
    run_name: str = ""
    run_config: dict[str, Any] | None = None  # the store's config of the run
    eval_at_step: dict[str, float] = field(default_factory=dict)
    eval_at_base: dict[str, float] = field(default_factory=dict)
    alarm_onset: int | None = None
    samples: list[tuple[str, int, str]] = field(default_factory=list)  # (prompt, seed, image path)
    trained_epochs: int | None = None  # the run's progress in the store
    run_status: str = ""
    history: bool = True  # False: a lone checkpoint file, no run's eval series, alarm or samples known


def parse_step(step: str) -> str | int:
    s = str(step).strip().lower()
    if s in ("best", "last"):
        return s
    try:
        n = int(s)
    except ValueError:
        raise ExportError(f"--step must be best, last or an epoch number, got {step!r}.") from None
    if n < 0:
        raise ExportError(f"--step must be best, last or an epoch number >= 0, got {n}.")
    return n


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def from_store(run_id: int, step: str | int = "best") -> Chosen:
    """The checkpoint of run ``run_id`` at ``step`` (best / last / N), with the store's eval
    values at that step and at step 0, the alarm and the step's eval samples."""
    from grpo_guard.store import queries
    from grpo_guard.store.db import RunNotFoundError

    try:
        run = queries.get_run(int(run_id))
    except RunNotFoundError:
        raise ExportError(f"there is no run {run_id} in this store; `grpo-guard runs list` shows the runs.") from None
    rows = queries.checkpoints(run.id)
    if not rows:
        raise ExportError(f"run {run.id} has no checkpoint yet; export it once it has saved one.")
    if step == "best":
        row = queries.best_checkpoint(run.id)
        if row is None:
            raise ExportError(no_best_reason(run.id, rows, run.config or {}))
        reason = "best gold"
    elif step == "last":
        on_disk = [c for c in rows if c.on_disk]
        if not on_disk:
            raise ExportError(f"every checkpoint of run {run.id} was deleted from disk; nothing can be exported.")
        row, reason = on_disk[-1], "last"
    else:
        match = [c for c in rows if c.step == step]
        have = ", ".join(str(c.step) for c in rows if c.on_disk) or "none"
        if not match:
            raise ExportError(f"run {run.id} has no checkpoint at step {step}; on disk: {have}.")
        row, reason = match[-1], "chosen"
        if not row.on_disk:
            raise ExportError(f"the checkpoint of run {run.id} at step {step} was pruned (keep_checkpoints); "
                              f"on disk: {have}.")
    path = queries.artifact_path(row.location)
    if not os.path.isfile(path):
        raise ExportError(f"the checkpoint file of run {run.id} at step {row.step} is gone from {path}.")
    series = queries.metric_series(run.id, [M.EVAL_PROXY, M.EVAL_GOLD, M.ALARM_ONSET], max_points=1_000_000)

    def at(key: str, s: int) -> float | None:
        steps, values = series.get(key, ([], []))
        return next((_finite(v) for st, v in zip(steps, values, strict=True) if st == s), None)

    chosen = Chosen(path=path, step=row.step, reason=reason, run_id=run.id, run_name=run.name,
                    run_config=run.config or None, trained_epochs=int(run.step), run_status=run.status)
    for key in (M.EVAL_PROXY, M.EVAL_GOLD):
        if (v := at(key, row.step)) is not None:
            chosen.eval_at_step[key] = v
        if (v := at(key, 0)) is not None:
            chosen.eval_at_base[key] = v
    onset = series.get(M.ALARM_ONSET, ([], []))[1]
    chosen.alarm_onset = int(onset[0]) if onset and _finite(onset[0]) is not None else None
    for s in queries.samples_for(run.id, step=row.step):
        try:
            chosen.samples.append((s.prompt, s.seed, queries.artifact_path(s.image_location)))
        except ValueError:
            continue
    return chosen


def no_best_reason(run_id: int, rows: list[Any], config: dict[str, Any],
                   fix: str = "export --step last or an epoch number") -> str:
    """Why run ``run_id`` (its checkpoint ``rows``) has no best-gold checkpoint, in one sentence
    ending with ``fix``: a short run whose gold never beat the base model's (step 0, which has no
    checkpoint) must not read as a pruned or gold-less one. Imports no torch."""
    if not rows:
        return f"run {run_id} has no checkpoint yet; {fix}."
    if not any(c.on_disk for c in rows):
        return f"every checkpoint of run {run_id} was deleted from disk; nothing can be exported."
    best = rows[-1].meta.get("best_step")
    if not isinstance(best, int) or best < 0:
        return f"run {run_id} has recorded no gold score, so it has no best-gold checkpoint; {fix}."
    if best == 0:
        return (f"the best gold score of run {run_id} is the base model's own (step 0, before any training), "
                f"which has no checkpoint; {fix}.")
    if any(c.step == best for c in rows):
        return f"the best-gold checkpoint of run {run_id} (step {best}) was deleted from disk; {fix}."
    every = config.get("checkpoint_every", "?")
    return (f"the best gold score of run {run_id} is at step {best}, where no checkpoint was saved "
            f"(checkpoint_every {every}); {fix}.")


def from_checkpoint(path: str) -> Chosen:
    """A checkpoint given by path: the step and eval values from its JSON sidecar; step 0, the
    alarm and the samples from the run folder around it when it is a ``grpo-guard train`` folder
    (``<run>/checkpoints/ckpt_*.pt`` beside ``scalars.jsonl`` and ``samples.jsonl``)."""
    from grpo_guard.training.checkpoint import resolve_checkpoint, sidecar_path

    try:
        path = resolve_checkpoint(path)
    except Exception as e:  # CheckpointError: one sentence already
        raise ExportError(str(e)) from None
    try:
        with open(sidecar_path(path), encoding="utf-8") as fh:
            side = json.load(fh)
    except (OSError, ValueError):
        side = {}
    meta = side.get("meta") or {}
    step = int(side.get("step", -1))
    in_store = _from_store_path(path, step)
    if in_store is not None:  # a checkpoint of a stored run (`grpo-guard runs best` prints such paths)
        if meta.get("best"):
            in_store.reason = "best gold"
        return in_store
    chosen = Chosen(path=os.path.abspath(path), step=step, reason="chosen")
    if meta.get("best"):
        chosen.reason = "best gold"
    for key in (M.EVAL_PROXY, M.EVAL_GOLD):
        if (v := _finite(meta.get(key))) is not None:
            chosen.eval_at_step[key] = v
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    scalars = os.path.join(run_dir, "scalars.jsonl")
    chosen.history = os.path.isfile(scalars)
    if chosen.history:
        from grpo_guard.training.recording import read_jsonl

        for row in read_jsonl(scalars):
            for key in (M.EVAL_PROXY, M.EVAL_GOLD):
                if key in row and (v := _finite(row[key])) is not None:
                    if row.get("step") == 0:
                        chosen.eval_at_base[key] = v
                    if row.get("step") == step:
                        chosen.eval_at_step.setdefault(key, v)
            if M.ALARM_ONSET in row and chosen.alarm_onset is None and _finite(row[M.ALARM_ONSET]) is not None:
                chosen.alarm_onset = int(row[M.ALARM_ONSET])
        for row in read_jsonl(os.path.join(run_dir, "samples.jsonl")):
            if row.get("step") == step and row.get("image"):
                chosen.samples.append((row["prompt"], int(row["seed"]), os.path.join(run_dir, row["image"])))
    return chosen


def _from_store_path(path: str, step: int) -> Chosen | None:
    """What the store knows about ``path`` when it is a checkpoint file of one of its runs
    (``<artifacts>/runs/<id>/checkpoints/``); None when it is not, or no store can be read (the
    file alone is then exported, with what its sidecar says)."""
    from grpo_guard.store import db

    if step < 0 or db.missing_store():
        return None
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(db.artifacts_root())).split(os.sep)
    if len(rel) != 4 or rel[0] != "runs" or not rel[1].isdigit() or rel[2] != "checkpoints":
        return None
    try:
        chosen = from_store(int(rel[1]), step)
    except Exception:  # noqa: BLE001 - unknown run, unreachable database: the file still exports
        return None
    return chosen if os.path.realpath(chosen.path) == os.path.realpath(path) else None

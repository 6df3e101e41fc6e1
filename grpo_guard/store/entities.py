"""Rows as they leave the store: plain frozen dataclasses, no SQLAlchemy attached.

The app and the worker see only these (and dicts, lists, numbers). Times are timezone-aware
UTC ``datetime``s. Imports no torch and no SQLAlchemy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

RUN_STATUSES: tuple[str, ...] = ("queued", "running", "stopping", "succeeded", "failed", "cancelled",
                                  "interrupted")
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running", "stopping")
TERMINAL_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
# A worker that was shut down (Ctrl-C, SIGTERM) checkpointed the run and let it go: neither active
# (no worker holds it) nor ended (the next worker to start resumes it at once, with no lost epoch).
INTERRUPTED = "interrupted"
# Statuses a user may resume by hand (``runs resume``); an interrupted run resumes by itself too.
RESUMABLE_STATUSES: tuple[str, ...] = ("failed", "cancelled", INTERRUPTED)


def stored_json(text: str | None, default: Any) -> Any:
    """A JSON column's value, or ``default`` when the text is empty, not JSON, or not of
    ``default``'s type (a hand-edited or truncated row reads as empty, never as an error)."""
    try:
        value = json.loads(text or "")
    except (TypeError, ValueError):
        return default
    return value if isinstance(value, type(default)) else default


def _jsonable(obj: Any) -> dict[str, Any]:
    out = asdict(obj)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif isinstance(v, tuple):
            out[k] = list(v)
    return out


@dataclass(frozen=True)
class RunRow:
    """Every column of one run. ``config`` is the full resolved RunConfig as a dict
    (``{}`` when the stored text is unreadable; ``config_error`` then says why)."""

    id: int
    name: str
    status: str
    config: dict[str, Any]
    config_fields_set: tuple[str, ...]
    config_error: str | None
    algorithm: str
    backbone: str
    stop_requested: bool
    sample_now: bool
    save_now: bool
    step: int
    total: int
    last_step: int
    attempt: int
    worker_host: str | None
    worker_gpu: str | None
    task_id: str | None
    heartbeat_at: datetime | None
    error: str | None
    traceback: str | None
    parent_id: int | None
    pair_id: str | None
    tags: tuple[str, ...]
    notes: str
    last_proxy: float | None
    last_gold: float | None
    last_eval_step: int | None
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class RunSummary:
    """One line of the runs table: a run's headline columns plus its latest eval values.

    ``latest_proxy`` / ``latest_gold`` are means over the eval prompt x seed set at
    ``latest_eval_step``; ``eta_seconds`` extrapolates this attempt's pace (None unless
    running); ``stale`` is True for a running run whose heartbeat is older than GG_STALE_AFTER.
    """

    id: int
    name: str
    status: str
    algorithm: str
    backbone: str
    step: int
    total: int
    attempt: int
    tags: tuple[str, ...]
    notes: str
    latest_proxy: float | None
    latest_gold: float | None
    latest_eval_step: int | None
    eta_seconds: float | None
    stale: bool
    error: str | None
    parent_id: int | None
    pair_id: str | None
    worker_host: str | None
    worker_gpu: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class SampleRow:
    """One eval image. ``image_location`` resolves to a file with ``queries.artifact_path``."""

    run_id: int
    step: int
    prompt: str
    seed: int
    image_location: str
    scores: dict[str, float] = field(default_factory=dict)
    proxy: float | None = None
    gold: float | None = None
    prompt_meta: dict[str, Any] = field(default_factory=dict)  # GenEval: tag, include, exclude

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class CheckpointRow:
    run_id: int
    step: int
    location: str
    meta: dict[str, Any]
    created_at: datetime
    # False once the file is gone (``keep_checkpoints`` pruned it, or someone deleted it): the
    # row stays as history, but nothing can resume from or download it.
    on_disk: bool = True

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class LogRow:
    id: int
    run_id: int
    attempt: int
    created_at: datetime
    level: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class Claim:
    """What a worker gets when it takes a queued run (``lifecycle.claim_run``)."""

    run_id: int
    lease: str
    attempt: int
    start_step: int


@dataclass(frozen=True)
class ExperimentMember:
    """One run of an experiment: its arm label (``<arm>`` or ``<arm>/control``), seed and row."""

    arm: str
    seed: int
    run: RunSummary

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "seed": self.seed, "run": self.run.to_dict()}


@dataclass(frozen=True)
class ExperimentRow:
    """An experiment and the progress of its runs: ``status_counts`` by run status, ``step`` and
    ``total`` summed over its runs (``progress`` = step / total), ``config`` the stored
    ExperimentConfig as a dict (base inlined)."""

    id: int
    name: str
    config: dict[str, Any]
    tags: tuple[str, ...]
    notes: str
    created_at: datetime
    runs: int
    status_counts: dict[str, int]
    step: int
    total: int

    @property
    def progress(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def status(self) -> str:
        """``running`` while any run is active, else ``interrupted`` (a worker shut down; resumes
        with the next one), ``failed`` / ``cancelled`` when some run ended so, else ``succeeded``
        (``empty`` without runs)."""
        c = self.status_counts
        for s in ("running", "stopping", "queued"):
            if c.get(s):
                return "running" if s != "queued" or c.get("succeeded") or c.get("running") else "queued"
        for s in ("interrupted", "failed", "cancelled", "succeeded"):
            if c.get(s):
                return s
        return "empty"

    def to_dict(self) -> dict[str, Any]:
        out = _jsonable(self)
        out.update(progress=self.progress, status=self.status)
        return out

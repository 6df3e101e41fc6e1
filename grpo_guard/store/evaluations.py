"""Named queries of benchmark evaluations (``grpo_guard.evaluation`` computes them, ``grpo-guard
eval`` and the worker's ``evaluate_model`` task write them, the pages read them). Imports no torch.

A row names the model evaluated (``model_kind`` base / run / checkpoint, with ``model_key`` saying
what "the same model" is, so a base-model result is reused for every run of that base), the
benchmark, the protocol (JSON and its hash: detector scale, images per prompt, prompt-set hash,
sampler settings, code version), every metric and the per-prompt results. Images live in the
artifact store under ``images_location`` (a run's under ``runs/<id>/``, so deleting the run
deletes them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from grpo_guard.store import artifacts
from grpo_guard.store.db import StoreError, as_utc, session_scope, utcnow
from grpo_guard.store.entities import stored_json
from grpo_guard.store.models import MODEL_KINDS, Evaluation


@dataclass(frozen=True)
class ModelRef:
    """The model an evaluation is of: ``kind`` base (``key`` = backbone + model), run (``run_id``
    and ``step``) or checkpoint (a file, keyed by its content hash)."""

    kind: str
    key: str
    run_id: int | None = None
    step: int | None = None
    checkpoint_path: str | None = None

    def label(self) -> str:
        if self.kind == "run":
            return f"run #{self.run_id} @ step {self.step}"
        if self.kind == "checkpoint":
            return f"checkpoint {self.checkpoint_path}"
        backbone, _, model = self.key.split(":", 1)[-1].partition(":")
        return f"base {backbone}" + (f" ({model})" if model else "")


@dataclass(frozen=True)
class EvaluationRow:
    id: int
    benchmark: str
    model: ModelRef
    protocol: dict[str, Any]
    protocol_hash: str
    status: str
    metrics: dict[str, float]
    per_prompt: list[dict[str, Any]] = field(default_factory=list)
    images_location: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


def protocol_hash(protocol: Mapping[str, Any]) -> str:
    """SHA-256 of the protocol's canonical JSON (sorted keys; keys starting with ``_``, such as the
    stored ``_request``, are bookkeeping and not part of it)."""
    kept = {k: v for k, v in protocol.items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _row(e: Evaluation, *, per_prompt: bool = True) -> EvaluationRow:
    return EvaluationRow(
        id=e.id, benchmark=e.benchmark,
        model=ModelRef(e.model_kind, e.model_key, e.run_id, e.step, e.checkpoint_path),
        protocol=stored_json(e.protocol_json, {}), protocol_hash=e.protocol_hash, status=e.status,
        metrics={k: float(v) for k, v in stored_json(e.metrics_json, {}).items() if isinstance(v, (int, float))},
        per_prompt=stored_json(e.per_prompt_json, []) if per_prompt else [], images_location=e.images_location,
        error=e.error, created_at=as_utc(e.created_at), finished_at=as_utc(e.finished_at) if e.finished_at else None)


def create_evaluation(benchmark: str, model: ModelRef, protocol: Mapping[str, Any], *,
                      status: str = "queued") -> int:
    """Insert an evaluation row (``queued`` or ``running``); return its id."""
    if model.kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {model.kind!r}")
    with session_scope(write=True) as s:
        row = Evaluation(benchmark=benchmark, model_kind=model.kind, model_key=model.key, run_id=model.run_id,
                         step=model.step, checkpoint_path=model.checkpoint_path,
                         protocol_json=json.dumps(dict(protocol), sort_keys=True, default=str),
                         protocol_hash=protocol_hash(protocol), status=status, created_at=utcnow())
        s.add(row)
        s.flush()
        return row.id


def images_location(evaluation_id: int, run_id: int | None) -> str:
    """Where an evaluation's images go in the artifact store."""
    base = f"{artifacts.run_prefix(run_id)}/evaluations" if run_id is not None else "evaluations"
    return f"{base}/{int(evaluation_id)}"


def claim_evaluation(evaluation_id: int) -> bool:
    """Move a queued evaluation to ``running``; False when it is not queued (a duplicate message)."""
    with session_scope(write=True) as s:
        done = s.execute(update(Evaluation).where(Evaluation.id == int(evaluation_id), Evaluation.status == "queued")
                         .values(status="running"))
        return bool(done.rowcount)


def finish_evaluation(evaluation_id: int, metrics: Mapping[str, float], per_prompt: Sequence[Mapping[str, Any]],
                      images: str | None) -> None:
    """Store the results; the row becomes ``succeeded``."""
    with session_scope(write=True) as s:
        s.execute(update(Evaluation).where(Evaluation.id == int(evaluation_id)).values(
            status="succeeded", metrics_json=json.dumps({k: float(v) for k, v in metrics.items()}),
            per_prompt_json=json.dumps(list(per_prompt), default=float), images_location=images,
            finished_at=utcnow(), error=None))


def fail_evaluation(evaluation_id: int, error: str) -> None:
    with session_scope(write=True) as s:
        s.execute(update(Evaluation).where(Evaluation.id == int(evaluation_id)).values(
            status="failed", error=str(error)[:10_000], finished_at=utcnow()))


def delete_evaluation(evaluation_id: int) -> None:
    """Remove a row and its images (an evaluation that failed half way, or a user's clean-up)."""
    with session_scope(write=True) as s:
        e = s.get(Evaluation, int(evaluation_id))
        if e is None:
            return
        loc = e.images_location
        s.delete(e)
    if loc:
        artifacts.delete(loc)


def get_evaluation(evaluation_id: int) -> EvaluationRow:
    with session_scope() as s:
        e = s.get(Evaluation, int(evaluation_id))
        if e is None:
            raise StoreError(f"no evaluation with id {evaluation_id}")
        return _row(e)


def find_result(model_key: str, benchmark: str, protocol_digest: str) -> EvaluationRow | None:
    """The latest succeeded evaluation of that model, benchmark and protocol, else None."""
    with session_scope() as s:
        e = s.execute(select(Evaluation).where(
            Evaluation.model_key == model_key, Evaluation.benchmark == benchmark,
            Evaluation.protocol_hash == protocol_digest, Evaluation.status == "succeeded")
            .order_by(Evaluation.id.desc()).limit(1)).scalar_one_or_none()
        return _row(e) if e is not None else None


def evaluations_of(run_ids: Sequence[int], *, per_prompt: bool = False) -> list[EvaluationRow]:
    """Every evaluation of these runs' checkpoints, oldest first."""
    ids = [int(r) for r in run_ids]
    if not ids:
        return []
    with session_scope() as s:
        rows = s.execute(select(Evaluation).where(Evaluation.run_id.in_(ids)).order_by(Evaluation.id)).scalars().all()
        return [_row(e, per_prompt=per_prompt) for e in rows]


def list_evaluations(*, limit: int = 200) -> list[EvaluationRow]:
    """The latest evaluations, newest first (without per-prompt results)."""
    with session_scope() as s:
        rows = s.execute(select(Evaluation).order_by(Evaluation.id.desc()).limit(int(limit))).scalars().all()
        return [_row(e, per_prompt=False) for e in rows]

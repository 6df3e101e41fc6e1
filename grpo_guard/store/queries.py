"""The store's named queries: the only functions the app calls (trackio's ``SQLiteStorage``
shape on SQLAlchemy 2). Rows leave as the frozen dataclasses of ``entities``.

Runs: ``create_run``, ``get_run``, ``get_run_summary``, ``runs_by_id``, ``list_runs``, ``pair_runs``, ``pair_of``,
``request_stop`` / ``request_sample_now`` / ``request_save_now``, ``set_tags``, ``set_notes``, ``delete_run``, ``resume_run``, ``clone_run``.
Experiments (``create_experiment``, ``list_experiments``, ``get_experiment``, ``experiment_runs``,
``experiment_of``) live in ``grpo_guard.store.experiments`` and are re-exported here.
Series and images (``metric_series``, ``step_stats_matrix``, ``samples_for`` ...) live in
``grpo_guard.store.series`` and are re-exported here.

Enqueueing is not done here (the store knows nothing of Celery): ``worker.submit`` calls
``create_run``, ``resume_run`` or ``clone_run`` and then sends the task.

Imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, or_, select, update

from grpo_guard.config import RunConfig
from grpo_guard.store import artifacts
from grpo_guard.store.db import RunNotFoundError, StoreError, as_utc, session_scope, utcnow
from grpo_guard.store.entities import (
    ACTIVE_STATUSES,
    INTERRUPTED,
    RESUMABLE_STATUSES,
    RUN_STATUSES,
    RunRow,
    RunSummary,
)
from grpo_guard.store.experiments import (  # noqa: F401  (re-exported)
    ExperimentNotFoundError,
    create_experiment,
    experiment_of,
    experiment_runs,
    get_experiment,
    list_experiments,
)
from grpo_guard.store.models import (
    Checkpoint,
    EvalSample,
    LogLine,
    Run,
    RunKey,
    RunTag,
    Scalar,
    StepStatRow,
)
from grpo_guard.store.series import (  # noqa: F401  (re-exported: the app calls queries.*)
    artifact_path,
    best_checkpoint,
    checkpoints,
    log_lines,
    max_steps,
    metric_keys,
    metric_series,
    sample_prompts,
    sample_steps,
    samples_across_runs,
    samples_for,
    step_stats_keys,
    step_stats_matrix,
    step_stats_series,
)
from grpo_guard.store.summaries import (  # noqa: F401  (re-exported)
    _SUMMARY_COLUMNS,
    DEFAULT_STALE_AFTER,
    _summaries,
    runs_by_id,
    stale_after,
)

_ORDERABLE = {
    "created_at": Run.created_at, "id": Run.id, "name": Run.name, "status": Run.status,
    "step": Run.step, "started_at": Run.started_at, "finished_at": Run.finished_at,
    "updated_at": Run.updated_at, "latest_proxy": Run.last_proxy, "latest_gold": Run.last_gold,
    "algorithm": Run.algorithm,
}



# ---- create / read --------------------------------------------------------------------------
def _clean_tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        tags = [tags]
    out: list[str] = []
    for t in tags:
        t = str(t).strip()
        if not t:
            continue
        if len(t) > 100:
            raise ValueError(f"tag {t[:20]!r}... is longer than 100 characters")
        if t not in out:
            out.append(t)
    return out


def create_run(config: RunConfig, *, name: str | None = None, tags: Sequence[str] = (),
               parent_id: int | None = None, pair_id: str | None = None,
               experiment: tuple[int, str, int] | None = None) -> int:
    """Insert a ``queued`` run holding the full resolved ``config``; return its id.
    ``experiment``: ``(experiment id, arm label, seed)`` of an experiment's run."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"create_run needs a RunConfig, got {type(config).__name__}")
    config.check_submittable()  # unregistered reward/gold names: ConfigError, nothing written
    tag_list = _clean_tags(tags)
    if name is not None and len(name) > 200:
        raise ValueError("a run name is at most 200 characters")
    now = utcnow()
    with session_scope(write=True) as s:
        run = Run(
            name=(name or "").strip(), config_json=config.to_json(),
            config_fields_set=json.dumps(sorted(config.fields_set())),
            algorithm=config.algorithm, backbone=config.backbone, status="queued",
            step=0, total=config.epochs, start_step=0, last_step=-1, attempt=1,
            parent_id=parent_id, pair_id=pair_id, notes="", created_at=now, updated_at=now,
        )
        if experiment is not None:
            run.experiment_id, run.experiment_arm, run.experiment_seed = int(experiment[0]), experiment[1], int(experiment[2])
        s.add(run)
        s.flush()
        if not run.name:
            run.name = f"{config.algorithm}-{config.backbone}-{run.id}"
        s.add_all(RunTag(run_id=run.id, tag=t) for t in tag_list)
        return run.id


def _decode_config(text: str) -> tuple[dict[str, Any], str | None]:
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as e:
        return {}, f"the stored config is not valid JSON ({e})"
    if not isinstance(data, dict):
        return {}, f"the stored config is a JSON {type(data).__name__}, not an object"
    return data, None


def _fields_set(text: str) -> tuple[str, ...]:
    try:
        data = json.loads(text)
        return tuple(str(x) for x in data) if isinstance(data, list) else ()
    except (TypeError, ValueError):
        return ()


def _to_run_row(r: Run, tags: Sequence[str]) -> RunRow:
    config, config_error = _decode_config(r.config_json)
    return RunRow(
        id=r.id, name=r.name, status=r.status, config=config,
        config_fields_set=_fields_set(r.config_fields_set), config_error=config_error,
        algorithm=r.algorithm, backbone=r.backbone, stop_requested=bool(r.stop_requested),
        sample_now=bool(r.sample_now), save_now=bool(r.save_now), step=r.step, total=r.total,
        last_step=r.last_step, attempt=r.attempt, worker_host=r.worker_host, worker_gpu=r.worker_gpu,
        task_id=r.task_id, heartbeat_at=as_utc(r.heartbeat_at), error=r.error, traceback=r.traceback,
        parent_id=r.parent_id, pair_id=r.pair_id, tags=tuple(tags), notes=r.notes or "",
        last_proxy=r.last_proxy, last_gold=r.last_gold, last_eval_step=r.last_eval_step,
        created_at=as_utc(r.created_at), enqueued_at=as_utc(r.enqueued_at),
        started_at=as_utc(r.started_at), finished_at=as_utc(r.finished_at), updated_at=as_utc(r.updated_at),
    )


def get_run(run_id: int) -> RunRow:
    """Every column of one run; ``RunNotFoundError`` (a LookupError) if there is none."""
    with session_scope() as s:
        r = s.get(Run, int(run_id))
        if r is None:
            raise RunNotFoundError(f"no run with id {run_id}")
        tags = s.scalars(select(RunTag.tag).where(RunTag.run_id == r.id).order_by(RunTag.tag)).all()
        return _to_run_row(r, tags)


def list_runs(*, status: str | Sequence[str] | None = None, tag: str | None = None,
              text: str | None = None, order_by: str = "created_at", descending: bool = True,
              limit: int = 500) -> list[RunSummary]:
    """The runs table: filter by status (one or several), tag, or a text found in the name,
    notes, algorithm or backbone (or equal to the id); newest first by default."""
    if order_by not in _ORDERABLE:
        raise ValueError(f"order_by must be one of {', '.join(sorted(_ORDERABLE))}; got {order_by!r}")
    q = select(*_SUMMARY_COLUMNS)
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        bad = [x for x in statuses if x not in RUN_STATUSES]
        if bad:
            raise ValueError(f"unknown status {bad[0]!r}; one of {', '.join(RUN_STATUSES)}")
        q = q.where(Run.status.in_(statuses))
    if tag:
        q = q.where(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == tag)))
    if text and text.strip():
        pat = f"%{text.strip()}%"
        conds = [Run.name.ilike(pat), Run.notes.ilike(pat), Run.algorithm.ilike(pat), Run.backbone.ilike(pat)]
        if text.strip().isdigit():
            conds.append(Run.id == int(text.strip()))
        q = q.where(or_(*conds))
    col = _ORDERABLE[order_by]
    q = q.order_by(col.desc().nulls_last() if descending else col.asc().nulls_last(), Run.id.desc())
    return _summaries(q.limit(max(1, int(limit))))


def get_run_summary(run_id: int) -> RunSummary:
    """The runs-table row (ETA, stale flag, latest proxy/gold) of one run, however old;
    ``RunNotFoundError`` (a LookupError) if there is none."""
    rows = runs_by_id([run_id])
    if not rows:
        raise RunNotFoundError(f"no run with id {run_id}")
    return rows[0]


def pair_runs(pair_id: str) -> list[RunSummary]:
    """The runs linked by ``pair_id`` (an A/B pair), oldest first."""
    return _summaries(select(*_SUMMARY_COLUMNS).where(Run.pair_id == str(pair_id)).order_by(Run.id))


def pair_of(run_id: int) -> list[int]:
    """The ids of the runs sharing ``run_id``'s pair id, oldest first (``[run_id]`` for a run
    without a pair); ``RunNotFoundError`` if there is no such run."""
    with session_scope() as s:
        found = s.execute(select(Run.pair_id).where(Run.id == int(run_id))).first()
        if found is None:
            raise RunNotFoundError(f"no run with id {run_id}")
        if found.pair_id is None:
            return [int(run_id)]
        return list(s.scalars(select(Run.id).where(Run.pair_id == found.pair_id).order_by(Run.id)))


# ---- control and annotations ----------------------------------------------------------------
def _require(s: Any, run_id: int) -> None:
    if s.scalar(select(Run.id).where(Run.id == int(run_id))) is None:
        raise RunNotFoundError(f"no run with id {run_id}")


def request_stop(run_id: int) -> str:
    """Ask a run to stop. A queued or interrupted run is cancelled at once (an interrupted one
    then does not resume by itself); a running one gets ``stop_requested`` (the trainer
    checkpoints and ends ``cancelled`` within a step). Returns the run's status afterwards."""
    rid, now = int(run_id), utcnow()
    with session_scope(write=True) as s:
        _require(s, rid)
        # Conditional updates, so a worker claiming the run at the same moment cannot slip by.
        if s.execute(update(Run).where(Run.id == rid, Run.status.in_(("queued", INTERRUPTED))).values(
                status="cancelled", finished_at=now, updated_at=now)).rowcount:
            return "cancelled"
        if s.execute(update(Run).where(Run.id == rid, Run.status.in_(("running", "stopping"))).values(
                status="stopping", stop_requested=True, updated_at=now)).rowcount:
            return "stopping"
        return s.scalar(select(Run.status).where(Run.id == rid))


def _set_flag(run_id: int, **flag: bool) -> bool:
    with session_scope(write=True) as s:
        _require(s, run_id)
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.status.in_(ACTIVE_STATUSES))
                        .values(updated_at=utcnow(), **flag))
        return bool(res.rowcount)


def request_sample_now(run_id: int) -> bool:
    """Ask the trainer for an eval round at its next step. False if the run is not active."""
    return _set_flag(run_id, sample_now=True)


def request_save_now(run_id: int) -> bool:
    """Ask the trainer for a checkpoint at its next step. False if the run is not active."""
    return _set_flag(run_id, save_now=True)


def set_tags(run_id: int, tags: Sequence[str]) -> tuple[str, ...]:
    clean = _clean_tags(tags)
    with session_scope(write=True) as s:
        _require(s, run_id)
        s.execute(delete(RunTag).where(RunTag.run_id == int(run_id)))
        s.add_all(RunTag(run_id=int(run_id), tag=t) for t in clean)
        s.execute(update(Run).where(Run.id == int(run_id)).values(updated_at=utcnow()))
    return tuple(sorted(clean))


def set_notes(run_id: int, notes: str) -> None:
    with session_scope(write=True) as s:
        _require(s, run_id)
        s.execute(update(Run).where(Run.id == int(run_id)).values(notes=str(notes or ""), updated_at=utcnow()))


def delete_run(run_id: int) -> None:
    """Delete a run's rows and its artifacts. A running run must be stopped first."""
    rid = int(run_id)
    with session_scope(write=True) as s:
        status = s.scalar(select(Run.status).where(Run.id == rid))
        if status is None:
            raise RunNotFoundError(f"no run with id {run_id}")
        if status in ("running", "stopping"):
            raise StoreError(f"run {rid} is {status}; stop it (and let it end) before deleting it")
        for model in (Scalar, StepStatRow, EvalSample, Checkpoint, LogLine, RunKey, RunTag):
            s.execute(delete(model).where(model.run_id == rid))
        s.execute(update(Run).where(Run.parent_id == rid).values(parent_id=None))
        s.execute(delete(Run).where(Run.id == rid))
    artifacts.delete(artifacts.run_prefix(rid))


# ---- resume and clone -----------------------------------------------------------------------
def resume_run(run_id: int) -> int:
    """Queue a failed, cancelled or interrupted run again as attempt+1; the worker resumes it from
    its last checkpoint (rows after that step are pruned first). Returns the run id; the caller
    enqueues."""
    rid, now = int(run_id), utcnow()
    with session_scope(write=True) as s:
        status = s.scalar(select(Run.status).where(Run.id == rid))
        if status is None:
            raise RunNotFoundError(f"no run with id {run_id}")
        res = s.execute(update(Run).where(Run.id == rid, Run.status.in_(RESUMABLE_STATUSES)).values(
            status="queued", attempt=Run.attempt + 1, stop_requested=False, sample_now=False,
            save_now=False, error=None, traceback=None, finished_at=None, lease=None,
            worker_host=None, worker_gpu=None, updated_at=now))
        if not res.rowcount:
            raise StoreError(f"run {rid} is {status}; only failed, cancelled or interrupted runs can be resumed "
                             "(clone it to start a new run from its config)")
    return rid


def clone_run(run_id: int, overrides: Mapping[str, Any] | None = None) -> int:
    """A new queued run from a copy of ``run_id``'s config with ``overrides`` applied (fields
    the source run left at their defaults are derived again, e.g. after changing algorithm).
    Raises ConfigError for a bad override. Returns the new id; the caller enqueues."""
    src = get_run(run_id)
    if src.config_error:
        raise StoreError(f"run {src.id} cannot be cloned: {src.config_error}")
    user = {k: src.config[k] for k in src.config_fields_set if k in src.config}
    base = RunConfig.from_dict(user if src.config_fields_set else src.config)
    config = base.with_overrides(dict(overrides or {}))
    return create_run(config, name=f"{src.name} (clone)"[:200], tags=src.tags, parent_id=src.id,
                      pair_id=None)

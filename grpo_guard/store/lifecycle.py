"""A run's state machine as seen by workers: claim, finish, requeue after a lost worker.

    queued --claim--> running --stop_requested--> stopping --> cancelled
       ^                 |--> succeeded | failed | cancelled
       |                 |--worker shut down (Ctrl-C, SIGTERM): checkpoint--> interrupted
       |                 '--heartbeat stale (sweep)--> queued (attempt+1) | failed
       |--resume_run (failed/cancelled/interrupted, attempt+1)
       '--requeue_interrupted (any worker's sweep, at once; attempt+1)

Every transition is one conditional UPDATE, so two workers can never both hold a run: a claim
only succeeds on a ``queued`` row and stamps a fresh ``lease``; a worker's writes (heartbeats,
rows, the final status) carry its lease and do nothing once the lease is gone (a sweep requeued
the run). Imports no torch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from grpo_guard.store.db import as_utc, session_scope, utcnow
from grpo_guard.store.entities import INTERRUPTED, TERMINAL_STATUSES, Claim
from grpo_guard.store.models import Checkpoint, LogLine, Run

CLAIMABLE = ("queued",)


class LeaseLostError(RuntimeError):
    """This worker no longer holds the run (a sweep declared it lost and requeued or failed
    it). The worker must stop at once and write nothing more."""


def claim_run(run_id: int, *, worker_host: str, worker_gpu: str | None = None,
              task_id: str | None = None) -> Claim | None:
    """Take a queued run: status ``running`` with a new lease. None if the run is not queued
    (cancelled meanwhile, already taken by another delivery, deleted)."""
    lease, now = str(uuid.uuid4()), utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.status.in_(CLAIMABLE)).values(
            status="running", lease=lease, worker_host=worker_host[:255], worker_gpu=worker_gpu,
            task_id=task_id, heartbeat_at=now, started_at=now, finished_at=None, stop_requested=False,
            error=None, traceback=None, start_step=Run.step, updated_at=now))
        if not res.rowcount:
            return None
        attempt, step = s.execute(select(Run.attempt, Run.step).where(Run.id == int(run_id))).one()
        s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=now, level="info",
                      message=f"attempt {attempt} started on {worker_host}" + (f" GPU {worker_gpu}" if worker_gpu else "")))
    return Claim(run_id=int(run_id), lease=lease, attempt=attempt, start_step=step)


def finish_run(run_id: int, lease: str, status: str, *, error: str | None = None,
               traceback: str | None = None) -> bool:
    """End the attempt holding ``lease`` with a terminal status. False if the lease was lost."""
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"finish_run needs a terminal status, got {status!r}")
    now = utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.lease == lease).values(
            status=status, lease=None, finished_at=now, heartbeat_at=now, stop_requested=False,
            sample_now=False, save_now=False, error=error, traceback=traceback, updated_at=now))
        if res.rowcount:
            attempt = s.scalar(select(Run.attempt).where(Run.id == int(run_id)))
            msg = f"attempt {attempt} ended: {status}" + (f": {error}" if error else "")
            s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=now,
                          level="error" if status == "failed" else "info", message=msg))
        return bool(res.rowcount)


def interrupt_run(run_id: int, lease: str, *, step: int | None = None) -> bool:
    """End the attempt holding ``lease`` as ``interrupted``: its worker is shutting down and the
    trainer has checkpointed ``step``. Not an end: the next worker resumes it (``requeue_interrupted``).
    False if the lease was lost."""
    now = utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.lease == lease).values(
            status=INTERRUPTED, lease=None, heartbeat_at=now, stop_requested=False, sample_now=False,
            save_now=False, error=None, traceback=None, updated_at=now))
        if res.rowcount:
            attempt = s.scalar(select(Run.attempt).where(Run.id == int(run_id)))
            at = f" after step {step}" if step is not None else ""
            s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=now, level="warning",
                          message=f"attempt {attempt} interrupted{at}: the worker was shut down; "
                                  "the run resumes from its checkpoint when a worker starts"))
        return bool(res.rowcount)


def interrupted_runs() -> list[int]:
    """Ids of the runs a worker shutdown left ``interrupted``, oldest first."""
    with session_scope() as s:
        return list(s.scalars(select(Run.id).where(Run.status == INTERRUPTED).order_by(Run.id)))


def requeue_interrupted(run_id: int) -> bool:
    """Queue an interrupted run again as attempt+1 (it resumes from the checkpoint its worker
    wrote on the way out). Conditional on the status, so of several sweepers exactly one wins."""
    now = utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.status == INTERRUPTED).values(
            status="queued", attempt=Run.attempt + 1, enqueued_at=now, finished_at=None, lease=None,
            stop_requested=False, updated_at=now))
        if res.rowcount:
            attempt = s.scalar(select(Run.attempt).where(Run.id == int(run_id)))
            s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=now, level="info",
                          message=f"requeued as attempt {attempt} after an interrupt"))
        return bool(res.rowcount)


def fail_unclaimed(run_id: int, error: str, traceback: str | None = None) -> bool:
    """Fail a run that could not even be started (e.g. its stored config is unreadable)."""
    now = utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.status.in_(("queued", "running"))).values(
            status="failed", lease=None, finished_at=now, error=error, traceback=traceback, updated_at=now))
        return bool(res.rowcount)


def mark_enqueued(run_id: int, task_id: str | None) -> None:
    with session_scope(write=True) as s:
        s.execute(update(Run).where(Run.id == int(run_id)).values(task_id=task_id, enqueued_at=utcnow()))


def latest_checkpoint(run_id: int) -> tuple[int, str] | None:
    """(step, location) of the run's newest checkpoint, or None."""
    with session_scope() as s:
        row = s.execute(select(Checkpoint.step, Checkpoint.location).where(Checkpoint.run_id == int(run_id))
                        .order_by(Checkpoint.step.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def stored_config(run_id: int) -> tuple[str, int] | None:
    """(config JSON text, attempt) of a run, or None if it does not exist."""
    with session_scope() as s:
        row = s.execute(select(Run.config_json, Run.attempt).where(Run.id == int(run_id))).first()
    return (row[0], row[1]) if row else None


# ---- lost workers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LostRun:
    run_id: int
    lease: str | None
    status: str
    attempt: int
    worker_host: str | None
    heartbeat_at: datetime | None


def find_stale(stale_after: float) -> list[LostRun]:
    """Running/stopping runs whose heartbeat is older than ``stale_after`` seconds."""
    cut = utcnow() - timedelta(seconds=stale_after)
    with session_scope() as s:
        rows = s.execute(select(Run.id, Run.lease, Run.status, Run.attempt, Run.worker_host, Run.heartbeat_at)
                         .where(Run.status.in_(("running", "stopping")),
                                (Run.heartbeat_at < cut) | Run.heartbeat_at.is_(None))).all()
    return [LostRun(r[0], r[1], r[2], r[3], r[4], as_utc(r[5])) for r in rows]


def recover_lost(lost: LostRun, *, action: str, reason: str) -> bool:
    """Take a lost run away from its (dead) worker: ``requeue`` as attempt+1, or ``fail``;
    a run that was stopping ends ``cancelled``. Conditional on the lease and the old heartbeat,
    so of two sweepers exactly one wins. True if this call changed the row."""
    now = utcnow()
    cond = [Run.id == lost.run_id, Run.status == lost.status]
    cond.append(Run.lease == lost.lease if lost.lease is not None else Run.lease.is_(None))
    cond.append(Run.heartbeat_at == lost.heartbeat_at if lost.heartbeat_at is not None else Run.heartbeat_at.is_(None))
    if lost.status == "stopping":
        values = dict(status="cancelled", finished_at=now, stop_requested=False, error=None)
    elif action == "requeue":
        values = dict(status="queued", attempt=Run.attempt + 1, enqueued_at=now, stop_requested=False)
    else:
        values = dict(status="failed", finished_at=now, error=reason)
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(*cond).values(lease=None, updated_at=now, **values))
        if res.rowcount:
            s.add(LogLine(run_id=lost.run_id, attempt=lost.attempt, created_at=now, level="warning", message=reason))
        return bool(res.rowcount)


def queued_waiting(older_than: float) -> list[tuple[int, datetime | None]]:
    """Queued runs sent (or created) more than ``older_than`` seconds ago: their message may
    have been lost with a broker restart."""
    cut = utcnow() - timedelta(seconds=older_than)
    with session_scope() as s:
        rows = s.execute(select(Run.id, Run.enqueued_at).where(
            Run.status == "queued", (Run.enqueued_at < cut) | (Run.enqueued_at.is_(None) & (Run.created_at < cut)))).all()
    return [(r[0], r[1]) for r in rows]


def touch_enqueued(run_id: int, previous: datetime | None) -> bool:
    """Stamp a re-send; conditional on the previous stamp so one sweeper re-sends."""
    cond = [Run.id == int(run_id), Run.status == "queued"]
    cond.append(Run.enqueued_at == previous if previous is not None else Run.enqueued_at.is_(None))
    with session_scope(write=True) as s:
        return bool(s.execute(update(Run).where(*cond).values(enqueued_at=utcnow())).rowcount)

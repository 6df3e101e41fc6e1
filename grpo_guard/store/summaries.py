"""Run summaries: the runs-table rows the pages and the CLI list (``RunSummary`` with tags, ETA
and the stale flag), below ``queries`` and ``experiments`` so both read them without a cycle."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from grpo_guard.store.db import as_utc, session_scope, utcnow
from grpo_guard.store.entities import RunSummary
from grpo_guard.store.models import Run, RunTag

DEFAULT_STALE_AFTER = 120.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a running run counts as lost (GG_STALE_AFTER)."""
    try:
        return max(1.0, float(os.environ.get("GG_STALE_AFTER", DEFAULT_STALE_AFTER)))
    except ValueError:
        return DEFAULT_STALE_AFTER


_SUMMARY_COLUMNS = (
    Run.id, Run.name, Run.status, Run.algorithm, Run.backbone, Run.step, Run.total, Run.start_step,
    Run.attempt, Run.notes, Run.last_proxy, Run.last_gold, Run.last_eval_step, Run.error,
    Run.parent_id, Run.pair_id, Run.worker_host, Run.worker_gpu, Run.heartbeat_at,
    Run.created_at, Run.started_at, Run.finished_at,
)


def _summaries(q: Any) -> list[RunSummary]:
    """RunSummary rows (tags, ETA and stale flag filled in) for a select of _SUMMARY_COLUMNS."""
    now = utcnow()
    stale_cut = now - timedelta(seconds=stale_after())
    with session_scope() as s:
        rows = s.execute(q).all()
        ids = [r.id for r in rows]
        tags: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for rid, t in s.execute(select(RunTag.run_id, RunTag.tag).where(RunTag.run_id.in_(ids))
                                    .order_by(RunTag.run_id, RunTag.tag)):
                tags[rid].append(t)
    out = []
    for r in rows:
        started, hb = as_utc(r.started_at), as_utc(r.heartbeat_at)
        eta = None
        if r.status in ("running", "stopping") and started and r.step > r.start_step and r.total > r.step:
            elapsed = (now - started).total_seconds()
            eta = (r.total - r.step) * elapsed / (r.step - r.start_step)
        out.append(RunSummary(
            id=r.id, name=r.name, status=r.status, algorithm=r.algorithm, backbone=r.backbone,
            step=r.step, total=r.total, attempt=r.attempt, tags=tuple(tags[r.id]), notes=r.notes or "",
            latest_proxy=r.last_proxy, latest_gold=r.last_gold, latest_eval_step=r.last_eval_step,
            eta_seconds=eta, stale=r.status in ("running", "stopping") and (hb is None or hb < stale_cut),
            error=(r.error.splitlines()[0] if r.error else None), parent_id=r.parent_id, pair_id=r.pair_id,
            worker_host=r.worker_host, worker_gpu=r.worker_gpu, heartbeat_at=hb,
            created_at=as_utc(r.created_at), started_at=started, finished_at=as_utc(r.finished_at),
        ))
    return out


def runs_by_id(run_ids: Sequence[int]) -> list[RunSummary]:
    """The runs-table rows of these runs, in the order given; ids with no run are left out."""
    wanted = list(dict.fromkeys(int(i) for i in run_ids))
    if not wanted:
        return []
    found = {r.id: r for r in _summaries(select(*_SUMMARY_COLUMNS).where(Run.id.in_(wanted)))}
    return [found[i] for i in wanted if i in found]

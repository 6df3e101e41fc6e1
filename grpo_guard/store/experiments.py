"""Named queries of experiments: ``create_experiment``, ``list_experiments`` (with progress
across their runs), ``get_experiment``, ``experiment_runs``, ``experiment_of``. Re-exported by
``grpo_guard.store.queries``. An experiment's runs are ordinary ``runs`` rows carrying its id,
their arm label and seed (``queries.create_run(..., experiment=...)``). Imports no torch."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from grpo_guard.store.db import RunNotFoundError, as_utc, session_scope, utcnow
from grpo_guard.store.entities import ExperimentMember, ExperimentRow, stored_json
from grpo_guard.store.models import Experiment, Run
from grpo_guard.store.summaries import runs_by_id


class ExperimentNotFoundError(RunNotFoundError):
    """No experiment with that id (a LookupError, like a missing run)."""


def create_experiment(config: Mapping[str, Any], *, name: str = "", tags: Sequence[str] = (),
                      notes: str = "") -> int:
    """Insert an experiment holding ``config`` (an ExperimentConfig as a dict); return its id.
    Its runs are inserted by ``worker.experiment.submit_experiment``."""
    name = (name or "").strip()
    if len(name) > 200:
        raise ValueError("an experiment name is at most 200 characters")
    now = utcnow()
    with session_scope(write=True) as s:
        exp = Experiment(name=name, config_json=json.dumps(dict(config), sort_keys=True),
                         tags_json=json.dumps([str(t) for t in tags]), notes=str(notes or ""),
                         created_at=now, updated_at=now)
        s.add(exp)
        s.flush()
        if not exp.name:
            exp.name = f"experiment-{exp.id}"
        return exp.id


def _rows(s: Any, exps: Sequence[Experiment]) -> list[ExperimentRow]:
    ids = [e.id for e in exps]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    steps: dict[int, tuple[int, int]] = {}
    if ids:
        q = (select(Run.experiment_id, Run.status, func.count(), func.sum(Run.step), func.sum(Run.total))
             .where(Run.experiment_id.in_(ids)).group_by(Run.experiment_id, Run.status))
        for eid, status, n, step, total in s.execute(q):
            counts[eid][status] = int(n)
            done = step if status != "succeeded" else total  # a finished run counts whole
            a, b = steps.get(eid, (0, 0))
            steps[eid] = (a + int(done or 0), b + int(total or 0))
    return [ExperimentRow(id=e.id, name=e.name, config=stored_json(e.config_json, {}), tags=tuple(stored_json(e.tags_json, [])),
                          notes=e.notes or "", created_at=as_utc(e.created_at), runs=sum(counts[e.id].values()),
                          status_counts=counts[e.id], step=steps.get(e.id, (0, 0))[0],
                          total=steps.get(e.id, (0, 0))[1]) for e in exps]


def list_experiments(*, limit: int = 200) -> list[ExperimentRow]:
    """Experiments, newest first, each with the progress across its runs."""
    with session_scope() as s:
        exps = s.scalars(select(Experiment).order_by(Experiment.id.desc()).limit(max(1, int(limit)))).all()
        return _rows(s, exps)


def get_experiment(experiment_id: int) -> ExperimentRow:
    """One experiment; ``ExperimentNotFoundError`` (a LookupError) if there is none."""
    with session_scope() as s:
        exp = s.get(Experiment, int(experiment_id))
        if exp is None:
            raise ExperimentNotFoundError(f"no experiment with id {experiment_id}")
        return _rows(s, [exp])[0]


def experiment_runs(experiment_id: int) -> list[ExperimentMember]:
    """The experiment's runs in submit order, each with its arm label and seed."""
    get_experiment(experiment_id)
    with session_scope() as s:
        members = s.execute(select(Run.id, Run.experiment_arm, Run.experiment_seed)
                            .where(Run.experiment_id == int(experiment_id)).order_by(Run.id)).all()
    rows = {r.id: r for r in runs_by_id([m.id for m in members])}
    return [ExperimentMember(m.experiment_arm or "", int(m.experiment_seed or 0), rows[m.id])
            for m in members if m.id in rows]


def experiment_of(run_id: int) -> tuple[int, str, int] | None:
    """``(experiment id, arm label, seed)`` of a run, or None when it belongs to none;
    ``RunNotFoundError`` when there is no such run."""
    with session_scope() as s:
        row = s.execute(select(Run.experiment_id, Run.experiment_arm, Run.experiment_seed)
                        .where(Run.id == int(run_id))).first()
    if row is None:
        raise RunNotFoundError(f"no run with id {run_id}")
    if row.experiment_id is None:
        return None
    return int(row.experiment_id), row.experiment_arm or "", int(row.experiment_seed or 0)

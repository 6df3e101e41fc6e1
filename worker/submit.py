"""The one submit path: insert the run rows, then send their tasks. Used by the New-run page,
the Runs page (resume), ``grpo-guard submit`` (single or ``--ab``), ``grpo-guard runs
resume`` / ``runs clone`` and experiments (``worker.experiment``).

Callers pass configs they already validated; this module writes the store and enqueues, and
returns at once (a page handler must not wait on a broker, STACK.md G7). A broker that cannot be
reached is not an error: the rows stay ``queued`` (the run's truth is the database) and a
worker's recovery sweep sends them again, so the caller gets a warning to show, not a failure.

Imports no torch: the app calls it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpo_guard.config import RunConfig

MAX_NAME = 200  # the store's limit on a run name


@dataclass(frozen=True)
class Submitted:
    """What a submit did: the run ids in the order given, the warnings to show (a task that
    could not be sent), and the id linking the runs (None for a single run)."""

    ids: tuple[int, ...]
    warnings: tuple[str, ...] = ()
    pair_id: str | None = None


def new_link_id() -> str:
    """A fresh id linking runs that belong together (an A/B pair)."""
    return uuid.uuid4().hex[:12]


def enqueue(run_id: int, num_gpus: int | None = None, num_nodes: int | None = None) -> str | None:
    """Send the run's task (its row is committed). Returns None, or a warning when the broker
    could not take it: the run stays queued and a worker's sweep sends it again."""
    from worker import celery_app  # looked up per call: tests swap enqueue_run

    try:
        if num_nodes is not None and num_nodes > 1:
            celery_app.enqueue_run(run_id, num_gpus=num_gpus, num_nodes=num_nodes)
        else:  # the one-node signature, which test doubles of enqueue_run keep
            celery_app.enqueue_run(run_id, num_gpus=num_gpus)
    except Exception as e:
        return (f"run #{run_id} is stored as queued, but its task could not be sent ({e}); "
                "a worker sends it again once the broker is reachable")
    return None


def run_names(name: str, labels: Sequence[str], linked: bool) -> list[str | None]:
    """Each run's name: linked runs are called "NAME [label]"; no name leaves the store's default
    (``<algorithm>-<backbone>-<id>``)."""
    name = (name or "").strip()
    if not name:
        return [None] * len(labels)
    names = [f"{name} [{label}]" if linked else name for label in labels]
    too_long = next((n for n in names if len(n) > MAX_NAME), None)
    if too_long is not None:
        raise ValueError(f"a run name is at most {MAX_NAME} characters; {too_long[:30]!r}... is {len(too_long)}")
    return list(names)


def submit_runs(runs: Sequence[tuple[str, RunConfig]], *, name: str = "", tags: Sequence[str] = (),
                notes: str = "", parent_id: int | None = None, pair_id: str | None = None,
                experiment: Sequence[tuple[int, str, int]] | None = None) -> Submitted:
    """Insert one queued run per ``(label, config)``, then enqueue them all.
    ``experiment``: per run, ``(experiment id, arm label, seed)`` linking it to its experiment.

    Several runs are linked by ``pair_id`` (a fresh one when not given: an A/B pair; a caller
    grouping runs of its own passes its id) and named "NAME [label]". Configs must be validated
    by the caller; every one is checked submittable before anything is written, so a bad one
    leaves the store untouched (ConfigError / ValueError)."""
    from grpo_guard.store import queries

    if not runs:
        raise ValueError("nothing to submit: no run config given")
    for _, config in runs:
        config.check_submittable()
    link = pair_id or (new_link_id() if len(runs) > 1 else None)
    names = run_names(name, [label for label, _ in runs], linked=link is not None)
    if experiment is not None and len(experiment) != len(runs):
        raise ValueError(f"{len(experiment)} experiment links for {len(runs)} runs")
    links = list(experiment) if experiment is not None else [None] * len(runs)
    ids = []
    for (_, config), run_name, member in zip(runs, names, links, strict=True):
        rid = queries.create_run(config, name=run_name, tags=list(tags), parent_id=parent_id, pair_id=link,
                                 experiment=member)
        if notes.strip():
            queries.set_notes(rid, notes)
        ids.append(rid)
    # Enqueue only once every row exists: a worker may start the first run at once.
    warnings = [w for rid, (_, config) in zip(ids, runs, strict=True) if (w := enqueue(rid, config.num_gpus, config.num_nodes))]
    warnings += list(dict.fromkeys(w for _, config in runs if (w := config.prompt_overlap_warning())))
    return Submitted(tuple(ids), tuple(warnings), link)


def resume(run_id: int) -> Submitted:
    """Queue a failed, cancelled or interrupted run again (it continues from its last checkpoint) and send
    its task. StoreError when the run cannot be resumed, RunNotFoundError when there is none."""
    from grpo_guard.store import queries

    rid = queries.resume_run(run_id)
    warning = enqueue(rid)
    return Submitted((rid,), (warning,) if warning else ())


def clone(run_id: int, overrides: Mapping[str, Any] | None = None) -> Submitted:
    """A new run from a copy of ``run_id``'s config with ``overrides`` (ConfigError for a bad
    one), recorded as its child, and its task sent."""
    from grpo_guard.store import queries

    new_id = queries.clone_run(run_id, overrides)
    warning = enqueue(new_id)
    return Submitted((new_id,), (warning,) if warning else ())


def submit_evaluation(request: Any) -> Submitted:
    """Store a queued evaluation of ``request`` (a checked
    :class:`grpo_guard.evaluation.request.EvalRequest`) and send it to a worker; the Run page's
    Evaluate… button and ``grpo-guard eval --submit`` both come here. A broker that cannot be
    reached leaves the row queued and returns a warning."""
    from grpo_guard.store import evaluations as store
    from worker.celery_app import enqueue_evaluation

    eid = store.create_evaluation(request.benchmark.name, request.model,
                                  {**request.protocol(), "_request": request.to_json()})
    try:
        enqueue_evaluation(eid)
    except Exception as e:  # noqa: BLE001 - kombu raises many kinds; the row stays queued
        return Submitted((eid,), (f"evaluation {eid} is queued but could not be sent to a worker "
                                  f"({type(e).__name__}: {e})",))
    return Submitted((eid,))

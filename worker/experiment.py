"""Experiments through the one submit path: one call inserts the experiment and all its runs
(arms × seeds, controls included) linked to it, then enqueues them; stop and resume act on every
run of the experiment. Used by ``grpo-guard experiment`` and the Experiments / New-run pages.

Imports no torch: the app calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grpo_guard.config import RunConfig
from grpo_guard.experiments.config import ExperimentConfig
from grpo_guard.store.entities import RESUMABLE_STATUSES
from worker.submit import Submitted, enqueue, run_names, submit_runs


@dataclass(frozen=True)
class SubmittedExperiment:
    """The experiment's id and what submitting its runs did."""

    experiment_id: int
    runs: Submitted


def submit_experiment(exp: ExperimentConfig) -> SubmittedExperiment:
    """Insert the experiment, then every run it expands to (validated by the ExperimentConfig;
    each checked submittable before anything is written), linked by the experiment's id and named
    "NAME [arm seed N]"; then enqueue them all."""
    from grpo_guard.store import queries

    expanded = exp.expand()
    for r in expanded:  # nothing is stored when one run could not be
        r.config.check_submittable()
    run_names(exp.name, [r.label for r in expanded], linked=True)  # a name too long: ValueError, nothing stored
    eid = queries.create_experiment(exp.to_dict(), name=exp.name, tags=exp.tags, notes=exp.notes)
    name = exp.name.strip() or queries.get_experiment(eid).name
    submitted = submit_runs([(r.label, r.config) for r in expanded], name=name, tags=exp.tags, notes=exp.notes,
                            pair_id=f"exp-{eid}", experiment=[(eid, r.arm, r.seed) for r in expanded])
    return SubmittedExperiment(eid, submitted)


def submit_pair(arms: Sequence[tuple[str, RunConfig]], *, name: str = "", tags: Sequence[str] = (), notes: str = "",
                parent_id: int | None = None) -> Submitted:
    """An A/B pair (``grpo_guard.experiments.pairing.ab_arms``) as what it is, a 2-arm, 1-seed experiment:
    stored as one (arms named by algorithm, the shared choices as the base) and its runs linked to
    it as well as to each other (``pair_id``)."""
    from grpo_guard.experiments.pairing import AB_ALGORITHM_FIELDS
    from grpo_guard.store import queries

    for _, config in arms:  # nothing is stored when one run could not be
        config.check_submittable()
    run_names(name, [label for label, _ in arms], linked=True)
    first = arms[0][1]
    skip = {*AB_ALGORITHM_FIELDS, "algorithm"}
    base = {k: v for k, v in first.to_dict().items() if k in first.fields_set() and k not in skip}
    exp = ExperimentConfig.from_dict({"name": name.strip()[:150], "tags": list(tags), "notes": notes, "base": base,
                                      "arms": {label: {"algorithm": c.algorithm} for label, c in arms},
                                      "seeds": [first.seed], "controls": False})
    eid = queries.create_experiment(exp.to_dict(), name=exp.name, tags=exp.tags, notes=exp.notes)
    return submit_runs(arms, name=name, tags=tags, notes=notes, parent_id=parent_id,
                       experiment=[(eid, label, c.seed) for label, c in arms])


def stop_experiment(experiment_id: int) -> dict[int, str]:
    """Ask every run of the experiment to stop (queued ones are cancelled at once, running ones
    checkpoint and end); ``{run id: status afterwards}``. Finished runs are left as they are."""
    from grpo_guard.store import queries

    out = {}
    for m in queries.experiment_runs(experiment_id):
        out[m.run.id] = queries.request_stop(m.run.id) if m.run.status in ("queued", "running", "stopping") \
            else m.run.status
    return out


def resume_experiment(experiment_id: int) -> Submitted:
    """Queue every failed, cancelled or interrupted run of the experiment again (each continues from
    its last checkpoint) and send their tasks; runs that are active or succeeded are left alone."""
    from grpo_guard.store import queries

    ids, warnings = [], []
    for m in queries.experiment_runs(experiment_id):
        if m.run.status in RESUMABLE_STATUSES:
            ids.append(queries.resume_run(m.run.id))
    for rid in ids:  # enqueue once every row is queued again
        if (w := enqueue(rid)) is not None:
            warnings.append(w)
    return Submitted(tuple(ids), tuple(warnings), f"exp-{experiment_id}")

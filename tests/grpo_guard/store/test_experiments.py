"""Experiments in the store (SQLite and PostgreSQL): an experiment row, its runs linked with arm
and seed, progress across them, lookups both ways, and the best-gold checkpoint of a run."""

from __future__ import annotations

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from grpo_guard.store.db import RunNotFoundError, session_scope
from grpo_guard.store.models import Run


def _link(eid: int, arm: str, seed: int, **cfg) -> int:
    return queries.create_run(RunConfig.from_dict({"epochs": 4, "seed": seed, **cfg}), experiment=(eid, arm, seed))


def test_an_experiment_lists_its_runs_with_arm_seed_and_progress(store):
    eid = queries.create_experiment({"arms": {"a": {}, "b": {}}, "seeds": [0, 1]}, name="study", tags=["x"])
    ids = [_link(eid, arm, seed) for seed in (0, 1) for arm in ("a", "a/control")]
    lone = queries.create_run(RunConfig.from_dict({}))
    members = queries.experiment_runs(eid)
    assert [(m.arm, m.seed, m.run.id) for m in members] == [("a", 0, ids[0]), ("a/control", 0, ids[1]),
                                                           ("a", 1, ids[2]), ("a/control", 1, ids[3])]
    with session_scope(write=True) as s:  # one run done, one half way
        s.get(Run, ids[0]).status, s.get(Run, ids[0]).step = "succeeded", 4
        s.get(Run, ids[1]).status, s.get(Run, ids[1]).step = "running", 2
    exp = queries.get_experiment(eid)
    assert (exp.name, exp.tags, exp.runs, exp.step, exp.total) == ("study", ("x",), 4, 6, 16)
    assert exp.status_counts == {"succeeded": 1, "running": 1, "queued": 2} and exp.status == "running"
    assert exp.config["seeds"] == [0, 1] and exp.progress == pytest.approx(6 / 16)
    assert [e.id for e in queries.list_experiments()][0] == eid
    assert queries.experiment_of(ids[3]) == (eid, "a/control", 1) and queries.experiment_of(lone) is None
    assert exp.to_dict()["progress"] == pytest.approx(0.375)


def test_an_unnamed_experiment_gets_a_name_and_missing_ones_are_lookup_errors(store):
    eid = queries.create_experiment({"arms": {"a": {}}})
    assert queries.get_experiment(eid).name == f"experiment-{eid}" and queries.get_experiment(eid).status == "empty"
    with pytest.raises(LookupError, match="no experiment with id 99999"):
        queries.get_experiment(99999)
    with pytest.raises(LookupError):
        queries.experiment_runs(99999)
    with pytest.raises(RunNotFoundError):
        queries.experiment_of(99999)


def test_deleting_a_run_keeps_the_experiment_and_its_other_runs(store):
    eid = queries.create_experiment({"arms": {"a": {}}})
    keep, gone = _link(eid, "a", 0), _link(eid, "a", 1)
    queries.delete_run(gone)
    assert [m.run.id for m in queries.experiment_runs(eid)] == [keep]


def test_best_checkpoint_is_the_marked_one_else_the_recorded_best_step(store, tmp_path):
    from grpo_guard.store.artifacts import checkpoint_location, put_bytes
    from grpo_guard.store.recorder import StoreRecorder

    rid = queries.create_run(RunConfig.from_dict({}))
    assert queries.best_checkpoint(rid) is None
    rec = StoreRecorder(rid)
    paths = {}
    for step in (2, 4, 6):
        loc = f"{checkpoint_location(rid)}/ckpt_{step:06d}.pt"
        put_bytes(loc, b"x")
        paths[step] = queries.artifact_path(loc)
        rec.log_checkpoint(step, paths[step], {"best_step": 4})
    assert queries.best_checkpoint(rid).step == 4, "the latest checkpoint records the best-gold step"
    rec.log_checkpoint(2, paths[2], {"best_step": 2, "best": True})
    assert queries.best_checkpoint(rid).step == 2, "a checkpoint marked best wins"
    rec.close()


CHILD_ROWS = (
    "INSERT INTO run_tags (run_id, tag) VALUES (:rid, 'old')",
    "INSERT INTO run_keys (run_id, kind, key) VALUES (:rid, 'scalar', 'eval/gold')",
    "INSERT INTO samples (run_id, step, prompt, seed, image_location, scores, prompt_meta) "
    "VALUES (:rid, 0, 'a cat', 0, 'runs/1/x.png', '{}', '{}')",
    "INSERT INTO checkpoints (run_id, step, location, meta, created_at) VALUES (:rid, 0, 'c.pt', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO log_lines (run_id, attempt, created_at, level, message) VALUES (:rid, 0, CURRENT_TIMESTAMP, 'info', 'hi')",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0004_keeps_existing_runs_outside_any_experiment_and_downgrades(backend, tmp_path):
    from sqlalchemy import text

    from grpo_guard.store import db
    from tests.grpo_guard.store.test_sample_prompt_meta import _downgrade
    from tests.storehelpers import backend_env

    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, "0003")
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("INSERT INTO runs (name, config_json, config_fields_set, algorithm, backbone, status, "
                              "step, total, start_step, last_step, attempt, notes, created_at, updated_at) VALUES "
                              "('old', '{}', '[]', 'grpo_guard', 'toy', 'queued', 0, 1, 0, 0, 0, '', "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            old = conn.execute(text("SELECT id FROM runs")).scalar_one()
            for sql in CHILD_ROWS:  # what a run owns: an upgrade that recreates `runs` must keep all of it
                conn.execute(text(sql), {"rid": old})
        db.upgrade(url)
        with db.get_engine(url).connect() as conn:
            kept = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :rid"), {"rid": old}).scalar_one()
                    for t in ("run_tags", "run_keys", "samples", "checkpoints", "log_lines")}
        assert kept == dict.fromkeys(kept, 1), f"the upgrade lost rows of an existing run: {kept}"
        assert db.current_revision(url) == db.SCHEMA_REVISION
        assert queries.experiment_of(old) is None and queries.list_experiments() == []
        eid = queries.create_experiment({"arms": {"a": {}}})
        _link(eid, "a", 0)
        _downgrade(url, "0003")
        with db.get_engine(url).connect() as conn:
            cols = list(conn.execute(text("SELECT * FROM runs")).keys())
            names = [r[0] for r in conn.execute(text("SELECT name FROM runs ORDER BY id"))]
        assert "experiment_id" not in cols and names[0] == "old" and len(names) == 2

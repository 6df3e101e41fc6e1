"""The ``interrupted`` status (SQLite and PostgreSQL): a worker shutdown hands the run back with a
checkpoint, the next sweep requeues it at once, a user can cancel or resume it; migration 0008
adds it to the runs.status CHECK and keeps every row of every kind, both ways."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from grpo_guard.config import RunConfig
from grpo_guard.store import db, lifecycle, queries
from grpo_guard.store.db import StoreError


def _claimed() -> tuple[int, str]:
    rid = queries.create_run(RunConfig.from_dict({"epochs": 4}))
    claim = lifecycle.claim_run(rid, worker_host="w1")
    return rid, claim.lease


def test_an_interrupted_run_is_requeued_at_once_by_one_sweeper(store):
    rid, lease = _claimed()
    assert lifecycle.interrupt_run(rid, "not-my-lease", step=2) is False
    assert lifecycle.interrupt_run(rid, lease, step=2) is True
    row = queries.get_run(rid)
    assert (row.status, row.is_terminal) == ("interrupted", False) and row.heartbeat_at is not None
    assert any("interrupted after step 2" in ln.message for ln in queries.log_lines(rid))
    assert lifecycle.find_stale(0.0) == [], "an interrupted run is no stale running run"
    assert lifecycle.interrupted_runs() == [rid]
    assert lifecycle.requeue_interrupted(rid) is True and lifecycle.requeue_interrupted(rid) is False
    row = queries.get_run(rid)
    assert (row.status, row.attempt) == ("queued", 2)
    assert lifecycle.claim_run(rid, worker_host="w2") is not None


def test_stop_cancels_an_interrupted_run_and_resume_queues_it(store):
    rid, lease = _claimed()
    lifecycle.interrupt_run(rid, lease)
    assert queries.request_stop(rid) == "cancelled"
    assert lifecycle.interrupted_runs() == [], "a cancelled run no longer resumes by itself"
    other, lease2 = _claimed()
    lifecycle.interrupt_run(other, lease2)
    assert queries.resume_run(other) == other and queries.get_run(other).status == "queued"
    with pytest.raises(StoreError, match="failed, cancelled or interrupted"):
        queries.resume_run(other)
    assert [r.id for r in queries.list_runs(status="cancelled")] == [rid]


# Rows of every kind a store holds, each pointing at the run (and the run at an experiment).
CHILD_ROWS = (
    "INSERT INTO run_tags (run_id, tag) VALUES (:rid, 'old')",
    "INSERT INTO run_keys (run_id, kind, key) VALUES (:rid, 'scalar', 'eval/gold')",
    "INSERT INTO scalars (run_id, key, step, value, special) VALUES (:rid, 'eval/gold', 1, 0.5, 0)",
    "INSERT INTO step_stats (run_id, step, denoise_index, sigma) VALUES (:rid, 1, 0, 0.9)",
    "INSERT INTO samples (run_id, step, prompt, seed, image_location, scores, prompt_meta) "
    "VALUES (:rid, 0, 'a cat', 0, 'runs/1/x.png', '{}', '{}')",
    "INSERT INTO checkpoints (run_id, step, location, meta, created_at) VALUES (:rid, 0, 'c.pt', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO log_lines (run_id, attempt, created_at, level, message) VALUES (:rid, 1, CURRENT_TIMESTAMP, 'info', 'hi')",
)
PREVIOUS = "0007"  # the revision before 0008 (the interrupted status)


def _counts(url: str) -> dict[str, int]:
    """Rows per non-empty table, every table of the schema (those this test fills, and any later
    ones: a table a later revision adds is empty, so it does not count as a difference)."""
    from sqlalchemy import inspect

    tables = [t for t in inspect(db.get_engine(url)).get_table_names() if t != "alembic_version"]
    with db.get_engine(url).connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}
    return {t: n for t, n in counts.items() if n}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0008_adds_interrupted_keeps_every_row_and_downgrades(backend, tmp_path):
    from tests.storehelpers import backend_env

    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, PREVIOUS)
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("INSERT INTO experiments (name, config_json, tags_json, notes, created_at, updated_at) "
                              "VALUES ('e', '{}', '[]', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            eid = conn.execute(text("SELECT id FROM experiments")).scalar_one()
            for status in ("queued", "running", "stopping", "succeeded", "failed", "cancelled"):
                conn.execute(text(
                    "INSERT INTO runs (name, config_json, config_fields_set, algorithm, backbone, status, step, total, "
                    "start_step, last_step, attempt, notes, experiment_id, experiment_arm, experiment_seed, created_at, "
                    "updated_at) VALUES (:n, '{}', '[]', 'grpo_guard', 'toy', :s, 1, 4, 0, 1, 1, '', :e, 'a', 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"n": status, "s": status, "e": eid})
            rids = conn.execute(text("SELECT id FROM runs ORDER BY id")).scalars().all()
            for rid in rids:
                for sql in CHILD_ROWS:
                    conn.execute(text(sql), {"rid": rid})
        before = _counts(url)
        db.upgrade(url)
        assert db.current_revision(url) == db.SCHEMA_REVISION
        assert _counts(url) == before, "the upgrade (which recreates `runs` on SQLite) lost rows"
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("UPDATE runs SET status = 'interrupted' WHERE name = 'running'"))
            with pytest.raises(Exception, match="(?i)check"), conn.begin_nested():  # the CHECK is still there
                conn.execute(text("UPDATE runs SET status = 'paused' WHERE name = 'queued'"))
        assert [r.name for r in queries.list_runs(status="interrupted")] == ["running"]
        assert {m.run.id for m in queries.experiment_runs(eid)} == set(rids)
        db.downgrade(url, PREVIOUS)
        assert _counts(url) == before, "the downgrade lost rows"
        with db.get_engine(url).connect() as conn:
            status = conn.execute(text("SELECT status FROM runs WHERE name = 'running'")).scalar_one()
        assert status == "cancelled", "an interrupted run becomes cancelled (resumable by hand) on downgrade"
        db.upgrade(url)
        assert db.current_revision(url) == db.SCHEMA_REVISION


def test_a_full_sqlite_disk_refuses_writes_with_the_reason_and_keeps_serving_reads(tmp_path, monkeypatch):
    """SQLITE_FULL, simulated without a mount: the page count is capped at what the store holds.
    A write (a new run) fails with one sentence saying the disk is full; reads go on."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path}/full.db"
    monkeypatch.setenv("GG_DATABASE_URL", url)
    monkeypatch.setenv("GG_ARTIFACTS", str(tmp_path / "artifacts"))
    rid = queries.create_run(RunConfig.from_dict({"epochs": 4}))
    engine = db.get_engine(url)
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    engine.dispose()  # new connections get the cap
    try:
        with pytest.raises(db.StoreFullError, match="no space left for the database.*everything stored can still be read"):
            for _ in range(50):
                queries.create_run(RunConfig.from_dict({"epochs": 4}),
                                   name="x" * 200)
        assert queries.get_run(rid).status == "queued" and queries.list_runs()[-1].id == rid
    finally:
        event.remove(engine, "connect", _cap)
        db.dispose_engines()

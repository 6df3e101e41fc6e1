"""The database layer: migrations agree with the models, stale schemas are refused with the fix,
SQLite runs with WAL and BEGIN IMMEDIATE, read scopes cannot write."""

from __future__ import annotations

import contextlib
import multiprocessing
import os

import pytest
from click.testing import CliRunner
from sqlalchemy import insert, select, text

from grpo_guard.store import db
from grpo_guard.store.models import Base, LogLine, Run
from tests.storehelpers import backend_env, pg_schema


def test_migrations_match_the_models(store):
    """Alembic's autogenerate finds no difference between the migrated schema and the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.get_engine(store).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_schema_revision_is_the_single_alembic_head():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(db.__file__), "migrations"))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert heads == [db.SCHEMA_REVISION], "bump db.SCHEMA_REVISION with every new migration"


def test_upgrade_is_idempotent(store):
    db.upgrade(store)
    db.upgrade(store)
    assert db.current_revision(store) == db.SCHEMA_REVISION


def test_stale_schema_is_refused_with_the_upgrade_command(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/old.db"
    monkeypatch.setenv("GG_AUTO_MIGRATE", "0")
    db.upgrade(url)
    with db.get_engine(url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    db._verified.clear()
    with pytest.raises(db.StaleSchemaError) as e, db.session_scope(url=url):
        pass
    assert "grpo-guard db upgrade" in str(e.value) and "0000" in str(e.value) and db.SCHEMA_REVISION in str(e.value)
    db.dispose_engines()


def test_postgres_without_schema_is_refused_not_created():
    with pg_schema() as url:
        with pytest.raises(db.StaleSchemaError, match="grpo-guard db upgrade"), db.session_scope(url=url):
            pass
        assert db.current_revision(url) is None, "nothing may be created behind the operator's back"


def test_sqlite_in_a_fresh_data_dir_is_created_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("GG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GG_DATABASE_URL", raising=False)
    monkeypatch.delenv("GG_AUTO_MIGRATE", raising=False)
    monkeypatch.delenv("GG_ARTIFACTS", raising=False)
    assert db.database_url() == f"sqlite:///{tmp_path}/data/grpo-guard.db"
    assert db.artifacts_root() == str(tmp_path / "data" / "artifacts")
    with db.session_scope() as s:
        assert s.execute(select(Run.id)).all() == []
    db.dispose_engines()


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path}/p.db"
    db.upgrade(url)
    with db.get_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    db.dispose_engines()


def test_read_only_scope_refuses_writes(store):
    with pytest.raises(db.ReadOnlySessionError), db.session_scope() as s:
        s.execute(insert(LogLine.__table__).values(run_id=1, attempt=1, level="info", message="x",
                                                   created_at=db.utcnow()))


def test_database_errors_come_out_as_store_errors(store):
    # no run 999999: the foreign key refuses the row
    with pytest.raises(db.StoreError, match="refused"), db.session_scope(write=True) as s:
        s.execute(insert(LogLine.__table__).values(run_id=999999, attempt=1, level="info", message="x",
                                                   created_at=db.utcnow()))


def test_unreachable_database_is_unavailable_not_a_crash():
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(db.StoreUnavailableError, match="127.0.0.1"):
        db.current_revision(url)


def _writer(url: str, n: int, q) -> None:
    from grpo_guard.store import db as d

    failures = 0
    for i in range(n):
        try:
            with d.session_scope(write=True, url=url) as s:  # read, then write: needs the lock up front
                last = s.execute(select(LogLine.id).order_by(LogLine.id.desc()).limit(1)).scalar() or 0
                s.execute(insert(LogLine.__table__).values(run_id=1, attempt=1, level="info",
                                                           message=f"{os.getpid()} {i} after {last}",
                                                           created_at=d.utcnow()))
        except d.StoreError:
            failures += 1
    q.put(failures)


def test_sqlite_writers_begin_immediate_so_none_fail(tmp_path):
    """STACK.md D2: concurrent read-then-write transactions never fail with "database is locked"."""
    url = f"sqlite:///{tmp_path}/w.db"
    db.upgrade(url)
    now = db.utcnow()
    with db.session_scope(write=True, url=url) as s:
        s.add(Run(id=1, name="r", config_json="{}", config_fields_set="[]", algorithm="", backbone="", status="queued",
                  step=0, total=0, start_step=0, last_step=-1, attempt=1, notes="", created_at=now, updated_at=now))
    db.dispose_engines()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(url, 60, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    failures = [q.get(timeout=5) for _ in procs]
    assert failures == [0, 0, 0, 0], f"writers failed with lock errors: {failures}"
    with db.session_scope(url=url) as s:
        assert s.execute(select(LogLine.id)).all().__len__() == 240
    db.dispose_engines()


def test_db_cli_upgrade_and_current(tmp_path, monkeypatch):
    from grpo_guard.cli import main

    monkeypatch.setenv("GG_AUTO_MIGRATE", "0")
    url = f"sqlite:///{tmp_path}/cli.db"
    r = CliRunner().invoke(main, ["db", "current", "--url", url])
    assert r.exit_code == 1 and "(none)" in r.output
    r = CliRunner().invoke(main, ["db", "upgrade", "--url", url])
    assert r.exit_code == 0 and f"-> {db.SCHEMA_REVISION}" in r.output, r.output
    r = CliRunner().invoke(main, ["db", "current", "--url", url])
    assert r.exit_code == 0, r.output
    db.dispose_engines()


def test_backend_env_leaves_no_postgres_schema_behind(tmp_path):
    from sqlalchemy import create_engine

    with backend_env("postgresql", tmp_path) as url:
        schema = url.rsplit("%3D", 1)[1]
    eng = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    with eng.connect() as c:
        left = c.execute(text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"), {"s": schema}).all()
    eng.dispose()
    assert left == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrading_from_0001_keeps_the_rows(backend, tmp_path):
    from sqlalchemy import inspect

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg_schema()) if backend == "postgresql" else f"sqlite:///{tmp_path}/m.db"
        db.upgrade(url, "0001")
        with db.get_engine(url).begin() as conn:
            conn.execute(text("INSERT INTO runs (id, name, config_json, config_fields_set, algorithm, backbone, status, "
                              "step, total, start_step, last_step, attempt, notes, created_at, updated_at) VALUES "
                              "(1, 'r', '{}', '[]', '', '', 'queued', 0, 0, 0, -1, 1, '', '2025-01-01', '2025-01-01')"))
            conn.execute(text("INSERT INTO scalars (run_id, key, step, value, special) VALUES (1, 'loss', 3, 0.5, 0)"))
            conn.execute(text("INSERT INTO step_stats (run_id, step, denoise_index, sigma) VALUES (1, 3, 0, 0.9)"))
        db.upgrade(url)
        assert db.current_revision(url) == db.SCHEMA_REVISION
        insp = inspect(db.get_engine(url))
        assert insp.get_foreign_keys("scalars") == [] and insp.get_foreign_keys("step_stats") == []
        assert insp.get_foreign_keys("samples"), "only the two series tables lose their foreign key"
        with db.get_engine(url).connect() as conn:
            assert conn.execute(text("SELECT value FROM scalars")).scalar() == 0.5
            assert conn.execute(text("SELECT sigma FROM step_stats")).scalar() == 0.9
            if backend == "sqlite":
                ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'step_stats'")).scalar()
                assert "WITHOUT ROWID" in ddl
        db.dispose_engines()

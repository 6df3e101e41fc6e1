"""Crashes and concurrency with real worker processes (STACK.md C11): a worker killed with
SIGKILL mid-run, Redis restarted mid-run, two workers sharing three runs.

Every pairing of database and broker appears here or in ``test_processes_e2e.py``."""

from __future__ import annotations

import time

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker.conftest import assert_continuous
from tests.worker.procs import (
    PrivateRedis,
    Worker,
    clear_redis_queue,
    wait_status,
    wait_step,
    workers,
    world_env,
)
from worker.celery_app import enqueue_run

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _queue(**kw) -> int:
    cfg = {"epochs": 40, "num_steps": 3, "eval_every": 5, "checkpoint_every": 5, "eval_seeds": [0], **kw}
    rid = queries.create_run(RunConfig.from_dict(cfg))
    enqueue_run(rid)
    return rid


def _starts(rid: int) -> int:
    return sum("fake trainer started" in ln.message for ln in queries.log_lines(rid, tail=10_000))


@pytest.mark.parametrize("backend,broker", [("sqlite", "embedded"), ("postgresql", "private-redis")])
def test_a_worker_killed_with_sigkill_is_recovered_with_a_continuous_history(backend, broker, tmp_path, monkeypatch):
    redis = PrivateRedis(str(tmp_path)) if broker == "private-redis" else None
    try:
        with backend_env(backend, tmp_path) as url:
            env = world_env(url, str(tmp_path), redis.url if redis else "embedded", GG_STALE_AFTER="2")
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            doomed = Worker(env, "doomed", str(tmp_path)).wait_ready()
            try:
                rid = _queue()
                wait_step(rid, 12)
                assert queries.checkpoints(rid), "the kill must come after a checkpoint"
                doomed.kill9()
            finally:
                doomed.stop()
            killed_at = queries.get_run(rid)
            assert killed_at.status == "running" and killed_at.worker_host == "doomed"
            with workers(env, ["rescuer"], str(tmp_path)) as ws:
                assert wait_status(rid, timeout=120, workers_=ws) == "succeeded"
            row = queries.get_run(rid)
            assert row.attempt == 2 and row.worker_host == "rescuer"
            assert any("doomed stopped heartbeating" in ln.message for ln in queries.log_lines(rid, tail=500))
            assert_continuous(rid, 40, 3, 5)
    finally:
        if redis:
            redis.stop()


def test_redis_restarted_mid_run_loses_nothing(tmp_path, monkeypatch):
    redis = PrivateRedis(str(tmp_path))
    try:
        with backend_env("sqlite", tmp_path) as url:
            env = world_env(url, str(tmp_path), redis.url)
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            with workers(env, ["w"], str(tmp_path)) as ws:
                rid = _queue()
                wait_step(rid, 5)
                redis.stop()
                time.sleep(1.0)
                redis.start()
                assert wait_status(rid, timeout=120, workers_=ws) == "succeeded"
                assert "Connection to broker lost" in ws[0].log(), "the restart must have been noticed"
                assert_continuous(rid, 40, 3, 5)
                after = _queue(epochs=3)  # the worker reconnected and takes new work
                assert wait_status(after, timeout=120, workers_=ws) == "succeeded"
            assert _starts(rid) == 1
    finally:
        redis.stop()


@pytest.mark.parametrize("backend,broker", [("sqlite", "redis"), ("postgresql", "embedded")])
def test_two_workers_three_runs_each_run_executes_once(backend, broker, tmp_path, monkeypatch):
    with backend_env(backend, tmp_path) as url:
        env = world_env(url, str(tmp_path), broker)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        try:
            with workers(env, ["w1", "w2"], str(tmp_path)) as ws:
                rids = [_queue(epochs=20) for _ in range(3)]
                for rid in rids:
                    assert wait_status(rid, timeout=120, workers_=ws) == "succeeded"
            rows = [queries.get_run(r) for r in rids]
            assert all(r.attempt == 1 for r in rows)
            assert [_starts(r) for r in rids] == [1, 1, 1], "a run was executed twice"
            assert {r.worker_host for r in rows} == {"w1", "w2"}, "both workers must have taken work"
            for rid in rids:
                assert_continuous(rid, 20, 3, 5)
        finally:
            if broker == "redis":
                clear_redis_queue(env["GG_QUEUE"])


def test_the_worker_command_refuses_a_database_without_schema(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from grpo_guard.cli import main
    from tests.storehelpers import pg_schema

    with pg_schema() as url:
        monkeypatch.setenv("GG_DATABASE_URL", url)
        monkeypatch.setenv("GG_DATA_DIR", str(tmp_path))
        monkeypatch.delenv("GG_AUTO_MIGRATE", raising=False)
        r = CliRunner().invoke(main, ["worker"])
    assert r.exit_code == 1 and "grpo-guard db upgrade" in r.output, r.output

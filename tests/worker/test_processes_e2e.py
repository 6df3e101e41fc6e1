"""End to end with real worker processes: SQLite with the embedded filesystem broker, and
PostgreSQL with the real Redis on 127.0.0.1:6379 (the crossed pairs run in
``test_processes_crash.py``).

Submit a toy run with ``grpo-guard submit --wait``; stop one mid-run and resume it; and a
corrupt config row, a missing checkpoint and an unwritable artifact dir each fail their run
with a clear stored message while the other runs go on. The trainer is the in-memory double
(``GG_TRAINER=tests.worker.fake_trainer:train``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from grpo_guard.cli import main
from grpo_guard.config import RunConfig
from grpo_guard.store import db, queries
from grpo_guard.store.models import Run
from tests.storehelpers import backend_env, unwritable
from tests.worker.conftest import assert_continuous
from tests.worker.procs import REPO, clear_redis_queue, wait_status, wait_step, workers, world_env
from worker.celery_app import enqueue_run

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

COMBOS = [("sqlite", "embedded"), ("postgresql", "redis")]


@pytest.fixture(scope="module", params=COMBOS, ids=["-".join(c) for c in COMBOS])
def world(request, tmp_path_factory):
    """A fresh store, one worker process, and this process's environment pointing at both."""
    backend, broker = request.param
    tmp = str(tmp_path_factory.mktemp(f"e2e-{backend}-{broker}"))
    with backend_env(backend, tmp) as url, pytest.MonkeyPatch.context() as mp:
        env = world_env(url, tmp, broker)
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            with workers(env, ["w1"], tmp) as ws:
                yield {"env": env, "tmp": tmp, "workers": ws}
        finally:
            if broker == "redis":
                clear_redis_queue(env["GG_QUEUE"])


def _queue(**kw) -> int:
    cfg = {"epochs": 8, "num_steps": 3, "eval_every": 4, "checkpoint_every": 2, "eval_seeds": [0], **kw}
    rid = queries.create_run(RunConfig.from_dict(cfg))
    enqueue_run(rid)
    return rid


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grpo_guard.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ}, timeout=120)


def test_submit_wait_runs_a_toy_run_end_to_end(world):
    cfg = os.path.join(world["tmp"], "toy.yaml")
    with open(cfg, "w") as fh:
        fh.write("algorithm: grpo_guard\nnum_steps: 3\neval_every: 4\neval_seeds: [0]\n")
    r = _cli("submit", cfg, "--epochs", "8", "--set", "checkpoint_every=4", "--tag", "e2e", "--wait", "--timeout", "90")
    assert r.returncode == 0, r.stdout + r.stderr
    rid = int(r.stdout.strip())
    row = queries.get_run(rid)
    assert row.status == "succeeded" and row.tags == ("e2e",) and row.worker_host == "w1"
    assert "succeeded" in r.stderr
    assert_continuous(rid, 8, 3, 4)

    bad = CliRunner().invoke(main, ["submit", cfg, "--epochs", "8", "--set", "seed=13", "--wait", "--timeout", "90"])
    assert bad.exit_code == 1, "--wait must exit non-zero unless the run succeeded"
    bad_id = int(bad.stdout.strip().splitlines()[0])
    assert queries.get_run(bad_id).status == "failed" and "injected failure at epoch 2" in bad.stderr

    invalid = CliRunner().invoke(main, ["submit", cfg, "--set", "group_size=1"])
    assert invalid.exit_code == 2 and "group_size" in invalid.stderr and invalid.stdout == ""


def test_stop_mid_run_then_resume_continues_the_history(world):
    rid = _queue(epochs=40, checkpoint_every=100)
    at = wait_step(rid, 3)
    out = CliRunner().invoke(main, ["runs", "stop", str(rid), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["status"] == "stopping", out.output
    assert wait_status(rid, workers_=world["workers"]) == "cancelled"
    (ck,) = queries.checkpoints(rid)
    assert at <= ck.step <= queries.get_run(rid).step and ck.step <= at + 3, (at, ck.step)

    out = CliRunner().invoke(main, ["runs", "resume", str(rid), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["attempt"] == 2, out.output
    assert wait_status(rid, workers_=world["workers"]) == "succeeded"
    assert_continuous(rid, 40, 3, 4)


def test_bad_runs_fail_with_clear_messages_and_other_runs_go_on(world):
    # a run whose only checkpoint goes missing before it is resumed
    lost = _queue(epochs=100)
    wait_step(lost, 2)
    queries.request_stop(lost)
    assert wait_status(lost, workers_=world["workers"]) == "cancelled"
    os.unlink(queries.artifact_path(queries.checkpoints(lost)[-1].location))

    corrupt = queries.create_run(RunConfig.from_dict({"epochs": 3}))
    with db.session_scope(write=True) as s:
        s.execute(update(Run).where(Run.id == corrupt).values(config_json='{"epochs": 3, '))
    full = queries.create_run(RunConfig.from_dict({"epochs": 3, "num_steps": 3}))
    with unwritable(os.path.join(db.artifacts_root(), "runs", str(full))):
        enqueue_run(corrupt)
        queries.resume_run(lost)
        enqueue_run(lost)
        enqueue_run(full)
        good = _queue()
        assert wait_status(good, workers_=world["workers"]) == "succeeded"
        for rid in (corrupt, lost, full):
            assert wait_status(rid, workers_=world["workers"]) == "failed"
    assert "stored config" in queries.get_run(corrupt).error and "not valid JSON" in queries.get_run(corrupt).error
    assert "is missing at" in queries.get_run(lost).error
    assert "cannot write" in queries.get_run(full).error and "artifact store" in queries.get_run(full).error
    shown = CliRunner().invoke(main, ["runs", "show", str(full)])
    assert "error      " in shown.output and "traceback" in shown.output, "the error and traceback are shown"
    assert_continuous(good, 8, 3, 4)

"""Worker processes, serve's embedded workers and the ranks a worker launches get the CPU-sharing
defaults of grpo_guard/training/cpu.py in their environment (before their torch starts)."""

from __future__ import annotations

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from grpo_guard.training import cpu
from tests.grpo_guard.test_cpu import clean_env  # noqa: F401  (fixture)
from tests.storehelpers import backend_env
from worker.tasks import execute_run


@pytest.fixture
def sqlite_store(tmp_path):
    with backend_env("sqlite", tmp_path) as url:
        yield url


def test_worker_children_and_serves_embedded_workers_get_them(clean_env, monkeypatch):  # noqa: F811
    from app.cli import _start_embedded_workers
    from worker.cli import spawn_worker

    envs = []

    class FakePopen:
        def __init__(self, argv, env=None, **kw):
            envs.append(env)

    monkeypatch.setattr("worker.cli.subprocess.Popen", FakePopen)
    spawn_worker(None)
    spawn_worker(None, env={"OMP_WAIT_POLICY": "ACTIVE"})
    _start_embedded_workers([1, 1])
    monkeypatch.setenv(cpu.SWITCH, "0")
    spawn_worker(None)
    assert envs[0]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert envs[1]["OMP_WAIT_POLICY"] == "ACTIVE", "the user's explicit policy is kept"
    assert [(e["OMP_WAIT_POLICY"], e["OMP_NUM_THREADS"]) for e in envs[2:4]] == [("PASSIVE", "1")] * 2
    assert "OMP_WAIT_POLICY" not in envs[4], "GG_CPU_TUNING=0 leaves the environment alone"


def test_the_ranks_of_a_multi_gpu_run_get_them(clean_env, sqlite_store, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GG_WORKER_GPU", "0,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    envs = []

    def launch(cmd, env):
        envs.append(env)
        path = cmd[cmd.index("--result") + 1]
        for rank in (0, 1):
            with open(f"{path}.{rank}", "w", encoding="utf-8") as fh:
                fh.write('{"status": "succeeded"}')
        return 0

    monkeypatch.setattr("worker.tasks.LAUNCH_FN", launch)
    rid = queries.create_run(RunConfig.from_dict({"backbone": "toy", "num_gpus": 2, "epochs": 1}))
    assert execute_run(rid) == "succeeded"
    assert envs[0]["OMP_WAIT_POLICY"] == "PASSIVE"

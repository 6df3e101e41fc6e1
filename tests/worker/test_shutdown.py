"""Ctrl-C on ``grpo-guard worker`` with the real trainer on the toy model: the process exits within
10 s, the run ends ``interrupted`` with a checkpoint of its last epoch, the next worker resumes it
at once (no stale-heartbeat wait, GG_STALE_AFTER left at 120 s) and the finished run trained every
epoch exactly once: 0 missing and 0 duplicated steps. SQLite, embedded broker."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker.procs import REPO, wait_status, wait_step, world_env
from worker.submit import submit_runs

pytestmark = [pytest.mark.slow]

EPOCHS = 5
CONFIG = {"backbone": "toy", "epochs": EPOCHS, "group_size": 4, "prompts_per_epoch": 2, "num_steps": 4,
          "eval_num_steps": 4, "eval_every": 2, "eval_seeds": [0], "train_batch_size": 4, "checkpoint_every": 10,
          "eval_prompts": ["a red circle on a blue background", "a green square on a white background"]}


def _worker_cli(env: dict[str, str], log: str) -> subprocess.Popen:
    """``grpo-guard worker`` as a terminal runs it: the leader of its own process group, so
    ``killpg(SIGINT)`` is exactly a Ctrl-C (which reaches the CLI but not its Celery workers)."""
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "worker", "--loglevel", "info"],
                                env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _log(path: str) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()


def test_ctrl_c_interrupts_with_a_checkpoint_and_the_next_worker_resumes_at_once(tmp_path, monkeypatch):
    with backend_env("sqlite", tmp_path) as url:
        env = world_env(url, str(tmp_path), "embedded", GG_TRAINER="", OMP_NUM_THREADS="1", GG_STALE_AFTER="120",
                        GG_SWEEP_INTERVAL="30", GG_WORKER_PRELOAD="1")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        full = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        rid = submit_runs([("toy", RunConfig.from_dict(CONFIG))]).ids[0]
        log1, log2 = str(tmp_path / "w1.log"), str(tmp_path / "w2.log")

        first = _worker_cli(full, log1)
        try:
            wait_step(rid, 2, timeout=240)
            t0 = time.monotonic()
            os.killpg(first.pid, signal.SIGINT)
            first.wait(timeout=60)
            exit_s = time.monotonic() - t0
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
        row = queries.get_run(rid)
        assert row.status == "interrupted", f"{row.status}: {row.error}\n{_log(log1)[-3000:]}"
        assert exit_s < 10, f"the worker took {exit_s:.1f}s to exit after Ctrl-C"
        cut = row.step
        ck = [c.step for c in queries.checkpoints(rid) if c.on_disk]
        assert ck and ck[-1] == cut, f"the last checkpoint ({ck}) is not the interrupted epoch {cut}"

        second = _worker_cli(full, log2)
        try:
            t1 = time.monotonic()
            wait_status(rid, ("running", "succeeded", "failed"), timeout=120)
            resumed_s = time.monotonic() - t1
            assert wait_status(rid, timeout=300) == "succeeded", _log(log2)[-3000:]
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            try:
                second.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(second.pid, signal.SIGKILL)
        assert resumed_s < 60, f"the interrupted run waited {resumed_s:.0f}s for the next worker"

        trained = queries.metric_series(rid, ["reward/total/mean"])["reward/total/mean"][0]
        evals = queries.metric_series(rid, ["eval/proxy"])["eval/proxy"][0]
        assert trained == list(range(1, EPOCHS + 1)), f"trained epochs {trained}"
        assert evals == [0, 2, 4, 5], f"eval steps {evals}"
        epochs_logged = [int(m.group(1)) for ln in queries.log_lines(rid, tail=10_000)
                         if (m := re.match(r"epoch (\d+)/", ln.message))]
        assert sorted(epochs_logged) == list(range(1, EPOCHS + 1)), \
            f"an epoch was trained twice or never: {sorted(epochs_logged)} (interrupted after {cut})"
        print(f"\nexit after Ctrl-C {exit_s:.1f}s; interrupted at step {cut}; resumed after {resumed_s:.1f}s")

"""Faults not covered by tests/worker (kill -9, Redis restart, two workers and an unwritable
artifact dir are there): another process holding the database's write lock while the recorder
flushes, and NaN in the reward or the loss of the real trainer."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import time

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import lifecycle, queries
from grpo_guard.store.recorder import StoreRecorder
from tests.hardening.helpers import BACKENDS
from tests.storehelpers import backend_env

HOLD_SECONDS = 3.0

_SQLITE_HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE runs SET notes = notes")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""

_PG_HOLDER = """
import psycopg, sys, time
c = psycopg.connect(sys.argv[1])
c.execute("LOCK TABLE scalars, log_lines, runs IN ACCESS EXCLUSIVE MODE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.commit()
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flush_waits_for_another_writer_and_loses_nothing(backend, tmp_path):
    """A separate process holds the write lock (SQLite BEGIN IMMEDIATE; PostgreSQL an exclusive
    table lock) for a few seconds while the recorder logs and flushes 200 steps."""
    with backend_env(backend, tmp_path) as url:
        rid = queries.create_run(RunConfig.from_dict({"epochs": 200}))
        claim = lifecycle.claim_run(rid, worker_host="hardening")
        if backend == "sqlite":
            script, target = _SQLITE_HOLDER, url.removeprefix("sqlite:///")
        else:
            script, target = _PG_HOLDER, url.replace("postgresql+psycopg://", "postgresql://")
        holder = subprocess.Popen([sys.executable, "-c", script, target, str(HOLD_SECONDS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
            rec = StoreRecorder(rid, lease=claim.lease, attempt=claim.attempt, flush_interval=0.05)
            t0 = time.monotonic()
            for step in range(1, 201):
                rec.log_scalars(step, {"loss": 1.0 / step, "reward/total/mean": step * 0.01})
                rec.log_line(f"step {step}")
            rec.flush()
            waited = time.monotonic() - t0
            rec.close()
        finally:
            holder.wait(timeout=30)
        assert holder.returncode == 0, holder.stderr.read()
        assert waited >= HOLD_SECONDS * 0.5, f"the flush did not wait for the lock ({waited:.2f}s)"
        steps, values = queries.metric_series(rid, ["loss"], max_points=10**6)["loss"]
        assert steps == list(range(1, 201)) and values == [1.0 / s for s in steps], "a row was lost"
        lines = [ln.message for ln in queries.log_lines(rid, tail=10**6)]
        assert sum(m.startswith("step ") for m in lines) == 200


# ---- NaN in the real trainer -----------------------------------------------------------------
TINY = dict(epochs=3, group_size=2, prompts_per_epoch=2, num_steps=4, eval_every=1, eval_num_steps=4, eval_seeds=[0],
            checkpoint_every=1, lora_rank=4, lora_alpha=8.0, train_batch_size=4,
            eval_prompts=["a red circle on a blue background"])


@pytest.fixture
def real_trainer(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import worker.tasks

    monkeypatch.setattr(worker.tasks, "TRAIN_FN", None)
    monkeypatch.setenv("GG_TRAINER", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with backend_env("sqlite", tmp_path):
        yield worker.tasks.execute_run


def _assert_history_up_to(rid: int, last: int) -> None:
    for key in ("loss", "reward/total/mean", "grad_norm"):
        steps, values = queries.metric_series(rid, [key])[key]
        assert steps == list(range(1, last + 1)), f"{key}: {steps}"
        assert all(math.isfinite(v) for v in values), f"{key}: a non-finite value was stored: {values}"
    assert queries.metric_series(rid, ["eval/proxy"])["eval/proxy"][0] == list(range(0, last + 1))
    assert [c.step for c in queries.checkpoints(rid)] == list(range(1, last + 1)), "no checkpoint after the fault"


@pytest.mark.slow
def test_a_reward_that_turns_nan_fails_the_run_with_a_reason(real_trainer, monkeypatch):
    from grpo_guard.rewards import REGISTRY, register
    from tests.hardening import nan_reward

    monkeypatch.setitem(REGISTRY, "test_nan_after", None)  # restored after the test
    register("test_nan_after", "tests.hardening.nan_reward:nan_after", "any")  # finite, then NaN
    monkeypatch.setitem(nan_reward.CALLS, "n", 0)
    monkeypatch.setenv("GG_TEST_NAN_AFTER", "3")  # eval 0, epoch 1, eval 1 are finite; epoch 2 is NaN
    rid = queries.create_run(RunConfig.from_dict({**TINY, "rewards": {"test_nan_after": 1.0}, "gold": ["toy_alignment"]}))
    assert real_trainer(rid) == "failed"
    row = queries.get_run(rid)
    assert "NaN" in row.error and "\n" not in row.error, row.error
    _assert_history_up_to(rid, 1)


@pytest.mark.slow
def test_a_nan_loss_fails_the_run_before_the_weights_change(real_trainer, monkeypatch):
    """Before the fix the NaN gradient was applied, a step-2 checkpoint of NaN weights was saved
    (so every resume failed again) and the run failed one epoch later naming the velocity."""
    import torch

    import grpo_guard.training.update as update

    real = update.policy_loss
    calls = {"n": 0}

    def nan_from_second_call(*a, **kw):
        out = real(*a, **kw)
        calls["n"] += 1
        return dataclasses.replace(out, loss=out.loss * math.nan) if calls["n"] >= 2 else out

    monkeypatch.setattr(update, "policy_loss", nan_from_second_call)
    rid = queries.create_run(RunConfig.from_dict(TINY))
    assert real_trainer(rid) == "failed"
    row = queries.get_run(rid)
    assert row.error.startswith("FloatingPointError: the policy gradient is not finite"), row.error
    _assert_history_up_to(rid, 1)
    ckpt = torch.load(queries.artifact_path(queries.checkpoints(rid)[-1].location), weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["trainable"].values()), "the kept checkpoint is clean"
    assert os.path.exists(queries.artifact_path(queries.checkpoints(rid)[-1].location))

"""The train_run task body against the store (no broker): claim, config, resume, outcomes,
stop, and the stale-heartbeat sweep. Runs on SQLite and PostgreSQL with the trainer double."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from sqlalchemy import update

from grpo_guard.config import RunConfig
from grpo_guard.store import db, lifecycle, queries
from grpo_guard.store.models import Run
from grpo_guard.store.recorder import StoreRecorder
from tests.storehelpers import unwritable
from tests.worker.conftest import assert_continuous
from worker import recovery
from worker.tasks import execute_run


def _submit(**kw) -> int:
    cfg = {"epochs": 12, "num_steps": 3, "eval_every": 4, "checkpoint_every": 3, "eval_seeds": [0], **kw}
    return queries.create_run(RunConfig.from_dict(cfg))


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_toy_run_ends_succeeded_with_a_continuous_history(store, fake):
    rid = _submit()
    assert execute_run(rid) == "succeeded"
    row = queries.get_run(rid)
    assert row.status == "succeeded" and row.step == 12 and row.finished_at and row.error is None
    assert row.last_eval_step == 12 and row.last_proxy == pytest.approx(0.62)
    assert_continuous(rid, 12, 3, 4)
    assert [c.step for c in queries.checkpoints(rid)] == [3, 6, 9, 12]


def test_a_second_delivery_does_not_run_it_again(store, fake):
    rid = _submit(epochs=2)
    assert execute_run(rid) == "succeeded"
    assert execute_run(rid) == "skipped"
    starts = [ln for ln in queries.log_lines(rid) if "fake trainer started" in ln.message]
    assert len(starts) == 1, "a duplicated message must not start the run twice"


def test_a_run_cancelled_while_queued_never_starts(store, fake):
    rid = _submit()
    queries.request_stop(rid)
    assert execute_run(rid) == "skipped" and queries.get_run(rid).status == "cancelled"


def test_stop_checkpoints_and_ends_cancelled_within_one_step_then_resume_continues(store, fake, monkeypatch):
    monkeypatch.setenv("GG_FAKE_STEP_SECONDS", "0.1")
    rid = _submit(epochs=40, checkpoint_every=100)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", execute_run(rid)))
    t.start()
    _wait(lambda: queries.get_run(rid).step >= 4)
    before = queries.get_run(rid).step
    queries.request_stop(rid)
    at = queries.get_run(rid).step  # the step stored when the request was committed
    t.join(30)
    row = queries.get_run(rid)
    assert out["r"] == "cancelled" and row.status == "cancelled" and not row.stop_requested
    (ck,) = queries.checkpoints(rid)
    assert before <= ck.step <= at + 1, f"stop requested at step {at}, the trainer went on to {ck.step}"
    assert row.last_step == ck.step

    monkeypatch.setenv("GG_FAKE_STEP_SECONDS", "0.01")
    queries.resume_run(rid)
    assert execute_run(rid) == "succeeded"
    row = queries.get_run(rid)
    assert row.attempt == 2 and row.status == "succeeded"
    assert_continuous(rid, 40, 3, 4)


def test_a_corrupt_config_row_fails_with_a_clear_message(store, fake):
    rid = _submit()
    with db.session_scope(write=True) as s:
        s.execute(update(Run).where(Run.id == rid).values(config_json="{not json"))
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert row.status == "failed" and "stored config" in row.error and "not valid JSON" in row.error
    assert row.config_error and queries.get_run(rid).traceback

    bad = _submit()
    with db.session_scope(write=True) as s:
        s.execute(update(Run).where(Run.id == bad).values(config_json=json.dumps({"group_size": 1})))
    assert execute_run(bad) == "failed"
    assert "group_size" in queries.get_run(bad).error


def test_a_missing_checkpoint_fails_the_resume_clearly_and_keeps_the_rows(store, fake):
    rid = _submit(epochs=6)
    execute_run(rid)
    with db.session_scope(write=True) as s:  # pretend it was cancelled, then lose the file
        s.execute(update(Run).where(Run.id == rid).values(status="cancelled"))
    last = queries.checkpoints(rid)[-1]
    os.unlink(queries.artifact_path(last.location))
    queries.resume_run(rid)
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert "last checkpoint (step 6) is missing" in row.error and "clone" in row.error
    assert queries.metric_series(rid, ["loss"])["loss"][0] == list(range(1, 7)), "nothing stored may be lost"


def test_an_unwritable_artifact_dir_fails_that_run_and_the_next_goes_on(store, fake):
    rid = _submit()
    with unwritable(os.path.join(db.artifacts_root(), "runs", str(rid))):
        assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert "cannot write" in row.error and "artifact store" in row.error, row.error
    other = _submit(epochs=3)
    assert execute_run(other) == "succeeded"


def test_a_trainer_exception_is_stored_with_its_traceback(store, fake, monkeypatch):
    monkeypatch.setenv("GG_FAKE_FAIL_AT", "3")
    rid = _submit()
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert row.error == "RuntimeError: injected failure at epoch 3"
    assert "Traceback" in row.traceback and "fake_trainer.py" in row.traceback
    assert any(ln.level == "error" and "injected failure" in ln.message for ln in queries.log_lines(rid))
    assert queries.metric_series(rid, ["loss"])["loss"][0] == [1, 2], "rows before the failure are kept"


def _crash(rid: int, steps: int, ckpt_at: int) -> None:
    """What a worker killed with SIGKILL leaves behind: a ``running`` row whose heartbeat stops,
    a checkpoint at ``ckpt_at``, and rows (with wrong values) past it up to ``steps``."""
    from grpo_guard.training.recording import Sample, StepStat
    from tests.worker import fake_trainer as ft

    claim = lifecycle.claim_run(rid, worker_host="doomed")
    rec = StoreRecorder(rid, lease=claim.lease, background=False)
    rec.log_sample(Sample(0, ft.PROMPTS[0], 0, ft.PNG))
    for step in range(1, steps + 1):
        ok = step <= ckpt_at
        rec.log_scalars(step, {"loss": ft.loss_at(step) if ok else 999.0})
        rec.log_step_stats([StepStat(step, j, 0.5, 0.1, {"grad_norm_v": ft.grad_norm_at(step, j) if ok else -1.0})
                            for j in range(3)])
        rec.log_sample(Sample(step, ft.PROMPTS[0], 0, ft.PNG))  # extra evals the retry must drop
        if step == ckpt_at:
            path = os.path.join(rec.checkpoint_dir(), f"ckpt_{step:06d}.json")
            with open(path, "w") as fh:
                json.dump({"step": step}, fh)
            rec.log_checkpoint(step, path)
    rec.flush()  # ...and then the process dies: no close, no final status


def test_the_sweep_requeues_a_lost_run_and_the_retry_has_a_continuous_history(store, fake):
    rid = _submit(epochs=10, eval_every=5)
    _crash(rid, 8, ckpt_at=5)
    sent = []
    assert [a for a in recovery.sweep(stale_after=60, enqueue=sent.append) if a.run_id == rid] == [], \
        "a fresh heartbeat is not stale"
    time.sleep(0.3)
    (action,) = [a for a in recovery.sweep(stale_after=0.2, enqueue=sent.append) if a.run_id == rid]
    assert action.action == "requeued" and sent == [rid] and "checkpoint of step 5" in action.message
    row = queries.get_run(rid)
    assert row.status == "queued" and row.attempt == 2
    assert execute_run(rid) == "succeeded"
    assert any("resuming from the checkpoint of step 5" in ln.message for ln in queries.log_lines(rid))
    assert queries.sample_steps(rid) == [0, 1, 2, 3, 4, 5, 10], "samples after the checkpoint must be pruned"
    steps, values = queries.metric_series(rid, ["loss"])["loss"]
    assert steps == list(range(1, 11)) and 999.0 not in values
    _, _, m = queries.step_stats_matrix(rid, "grad_norm_v")
    assert all(v > 0 for row in m for v in row)


def test_sweep_policies(store, fake):
    rid = _submit()
    claim = lifecycle.claim_run(rid, worker_host="gone")
    time.sleep(0.3)
    (a,) = [x for x in recovery.sweep(stale_after=0.2, on_lost="fail", enqueue=lambda _i: None) if x.run_id == rid]
    row = queries.get_run(rid)
    assert a.action == "failed" and row.status == "failed" and f"grpo-guard runs resume {rid}" in row.error
    assert not lifecycle.finish_run(rid, claim.lease, "succeeded"), "the dead worker's lease is void"

    many = _submit()
    with db.session_scope(write=True) as s:
        s.execute(update(Run).where(Run.id == many).values(attempt=3))
    lifecycle.claim_run(many, worker_host="gone")
    stopping = _submit()
    lifecycle.claim_run(stopping, worker_host="gone")
    queries.request_stop(stopping)
    time.sleep(0.3)
    acts = {x.run_id: x for x in recovery.sweep(stale_after=0.2, max_attempts=3, enqueue=lambda _i: None)}
    assert acts[many].action == "failed" and "lost 3 times" in queries.get_run(many).error
    assert acts[stopping].action == "cancelled" and queries.get_run(stopping).status == "cancelled"


def test_sweep_resends_queued_runs_whose_message_may_be_lost(store, fake):
    rid = _submit()
    lifecycle.mark_enqueued(rid, "t1")
    sent = []
    time.sleep(0.3)
    acts = [a for a in recovery.sweep(stale_after=60, resend_after=0.2, enqueue=sent.append) if a.run_id == rid]
    assert [a.action for a in acts] == ["resent"] and rid in sent
    assert [a for a in recovery.sweep(stale_after=60, resend_after=0.2, enqueue=sent.append) if a.run_id == rid] == []
    queries.request_stop(rid)


def test_a_run_whose_plan_does_not_fit_the_gpu_is_refused_before_weights_load(store, fake, monkeypatch,
                                                                             tmp_path_factory):
    import worker.tasks

    monkeypatch.setenv("GG_GPU_MEMORY_GIB", "0.5")   # this worker's GPU, as tests and shared GPUs give it
    monkeypatch.setenv("GG_PLAN_CACHE", str(tmp_path_factory.getbasetemp() / "plan-cache"))  # shared by the session
    called: list[int] = []
    monkeypatch.setattr(worker.tasks, "TRAIN_FN", lambda *a, **k: called.append(1))
    rid = _submit(update_rows_per_forward=6, sample_batch_size=8, group_size=4, prompts_per_epoch=2, train_batch_size=4,
                  num_steps=4)
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert not called, "the trainer (and its weights) never started"
    assert "does not fit this worker's GPU" in row.error and "0.5 GiB" in row.error and "planned peak" in row.error
    assert row.error.count(". ") == 0, "one sentence"

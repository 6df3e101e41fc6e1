"""StoreRecorder / StoreControl: batched, idempotent, fenced writes; prune on resume; flags."""

from __future__ import annotations

import contextlib
import os
import time

import pytest
from sqlalchemy import event, func, select

from grpo_guard.config import RunConfig
from grpo_guard.store import db, lifecycle, queries
from grpo_guard.store.artifacts import ArtifactError
from grpo_guard.store.lifecycle import LeaseLostError
from grpo_guard.store.models import EvalSample, Scalar, StepStatRow
from grpo_guard.store.recorder import StoreControl, StoreRecorder
from grpo_guard.training.recording import Control, Recorder, Sample, StepStat
from tests.storehelpers import unwritable


def _run(**kw) -> int:
    return queries.create_run(RunConfig.from_dict({"epochs": 20, "num_steps": 4, **kw}))


def _claimed() -> tuple[int, str]:
    rid = _run()
    return rid, lifecycle.claim_run(rid, worker_host="test").lease


def _count(model, rid: int) -> int:
    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.run_id == rid))


def _stats(step: int, T: int = 4, scale: float = 1.0) -> list[StepStat]:
    return [StepStat(step, j, 1 - j / T, 1 / T, {"grad_norm_v": scale * (step + j)}) for j in range(T)]


def test_store_recorder_and_control_satisfy_the_protocols(store):
    rid = _run()
    rec = StoreRecorder(rid, background=False)
    assert isinstance(rec, Recorder) and isinstance(StoreControl(rid), Control)
    rec.close()


def test_one_transaction_per_flush_not_per_row(store):
    rid = _run()
    commits = []
    engine = db.get_engine()
    listener = lambda conn: commits.append(1)  # noqa: E731
    event.listen(engine, "commit", listener)
    try:
        rec = StoreRecorder(rid, background=False)
        for step in range(50):
            rec.log_scalars(step, {"a": step, "b": -step})
            rec.log_step_stats(_stats(step))
        rec.log_line("x")
        assert commits == [], "nothing may be written before a flush"
        rec.flush()
        assert len(commits) == 1, f"{50 * 6 + 1} rows must go in one transaction, saw {len(commits)} commits"
        rec.close()
    finally:
        event.remove(engine, "commit", listener)
    assert _count(Scalar, rid) == 100 and _count(StepStatRow, rid) == 200


def test_replayed_steps_neither_duplicate_nor_lose_rows(store):
    """A retried batch or a replayed step overwrites by natural key (last value wins)."""
    rid = _run()
    with StoreRecorder(rid, background=False) as rec:
        for step in range(10):
            rec.log_scalars(step, {"loss": step})
            rec.log_step_stats(_stats(step))
            rec.log_sample(Sample(step, "p", 0, b"img", proxy=1.0))
        rec.flush()
        for step in range(5, 10):  # replay the second half with new values
            rec.log_scalars(step, {"loss": 100 + step})
            rec.log_step_stats(_stats(step, scale=2.0))
            rec.log_sample(Sample(step, "p", 0, b"img2", proxy=2.0))
    assert _count(Scalar, rid) == 10 and _count(StepStatRow, rid) == 40 and _count(EvalSample, rid) == 10
    steps, values = queries.metric_series(rid, ["loss"])["loss"]
    assert steps == list(range(10)) and values == [0, 1, 2, 3, 4, 105, 106, 107, 108, 109]
    assert [s.proxy for s in queries.samples_for(rid)] == [1.0] * 5 + [2.0] * 5


def test_prune_after_drops_later_rows_and_their_images(store):
    rid = _run()
    with StoreRecorder(rid, background=False) as rec:
        for step in range(10):
            rec.log_scalars(step, {"loss": step})
            rec.log_step_stats(_stats(step))
            rec.log_sample(Sample(step, "p", 0, b"img", proxy=float(step), gold=1.0))
            if step % 3 == 0:
                rec.log_checkpoint(step, os.path.join(rec.checkpoint_dir(), f"c{step}.pt"))
        rec.log_scalars(9, {"late": 1.0})  # still buffered when prune_after is called
        images = [queries.artifact_path(s.image_location) for s in queries.samples_for(rid)]
        rec.prune_after(6)
    assert queries.metric_series(rid)["loss"][0] == list(range(7)) and "late" not in queries.metric_series(rid)
    assert _count(StepStatRow, rid) == 28 and [c.step for c in queries.checkpoints(rid)] == [0, 3, 6]
    assert [s.step for s in queries.samples_for(rid)] == list(range(7))
    assert all(os.path.exists(p) for p in images[:7]) and not any(os.path.exists(p) for p in images[7:])
    row = queries.get_run(rid)
    assert row.last_step == 6 and row.last_eval_step == 6 and row.last_proxy == 6.0
    assert any("rows of later steps removed" in ln.message for ln in queries.log_lines(rid))


def test_background_flusher_writes_and_heartbeats(store):
    rid, lease = _claimed()
    rec = StoreRecorder(rid, lease=lease, flush_interval=0.05, heartbeat_interval=0.2)
    try:
        before = queries.get_run(rid).heartbeat_at
        rec.log_scalars(3, {"x": 1.0})
        rec.set_progress(3, 20)
        deadline = time.monotonic() + 10
        while queries.max_steps([rid])[rid] != 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queries.get_run(rid).step == 3, "the flusher thread must write without an explicit flush"
        time.sleep(0.5)
        assert queries.get_run(rid).heartbeat_at > before, "an idle recorder still heartbeats"
    finally:
        rec.close()
        lifecycle.finish_run(rid, lease, "succeeded")


def test_a_failed_write_keeps_the_batch_for_the_next_flush(store, monkeypatch):
    rid = _run()
    rec = StoreRecorder(rid, background=False, retry_for=0.0)
    rec.log_scalars(1, {"a": 1.0})
    real = rec._write
    calls = []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 1:
            raise db.StoreUnavailableError("database unavailable (test)")
        return real(batch)

    monkeypatch.setattr(rec, "_write", flaky)
    with pytest.raises(db.StoreUnavailableError):
        rec.flush()
    rec.log_scalars(1, {"a": 2.0})  # newer value logged meanwhile wins
    rec.log_scalars(2, {"a": 3.0})
    rec.flush()
    rec.close()
    assert queries.metric_series(rid)["a"] == ([1, 2], [2.0, 3.0])


def test_a_worker_that_lost_its_lease_writes_nothing(store):
    rid, lease = _claimed()
    rec = StoreRecorder(rid, lease=lease, background=False)
    ctl = StoreControl(rid, lease=lease, min_interval=0)
    rec.log_scalars(1, {"a": 1.0})
    rec.flush()
    (lost,) = [x for x in lifecycle.find_stale(-1) if x.run_id == rid]  # as a sweep would see it
    assert lifecycle.recover_lost(lost, action="requeue", reason="test takeover")
    rec.log_scalars(2, {"a": 2.0})
    with pytest.raises(LeaseLostError):
        rec.flush()
    with pytest.raises(LeaseLostError):
        rec.log_scalars(3, {"a": 3.0})
    with pytest.raises(LeaseLostError):
        ctl.stop_requested()
    assert queries.metric_series(rid)["a"][0] == [1]
    assert queries.get_run(rid).status == "queued" and queries.get_run(rid).attempt == 2


def test_control_reads_and_clears_flags(store):
    rid, lease = _claimed()
    ctl = StoreControl(rid, lease=lease, min_interval=0)
    assert not ctl.stop_requested() and not ctl.take_sample_now() and not ctl.take_save_now()
    queries.request_sample_now(rid)
    queries.request_save_now(rid)
    assert ctl.take_sample_now() and not ctl.take_sample_now(), "take_* clears the flag it reports"
    assert ctl.take_save_now() and not ctl.take_save_now()
    queries.request_stop(rid)
    assert ctl.stop_requested()
    lifecycle.finish_run(rid, lease, "cancelled")


def test_control_survives_a_database_blip(store, monkeypatch):
    rid = _run()
    ctl = StoreControl(rid, min_interval=0)
    assert not ctl.stop_requested()

    @contextlib.contextmanager
    def down(*a, **k):
        raise db.StoreUnavailableError("down")
        yield

    monkeypatch.setattr("grpo_guard.store.recorder.session_scope", down)
    assert not ctl.stop_requested() and not ctl.take_save_now()


def test_an_unwritable_artifact_dir_gives_a_clear_error(store):
    rid = _run()
    rec = StoreRecorder(rid, background=False)
    with unwritable(os.path.join(db.artifacts_root(), "runs", str(rid))):
        with pytest.raises(ArtifactError, match=r"cannot write the eval image of step 3 to the artifact store at .*GG_ARTIFACTS"):
            rec.log_sample(Sample(3, "p", 0, b"img"))
        with pytest.raises(ArtifactError, match="cannot write checkpoints"):
            rec.checkpoint_dir()
    rec.close()


def test_checkpoints_outside_the_artifact_root_are_refused(store, tmp_path):
    rid = _run()
    with StoreRecorder(rid, background=False) as rec, pytest.raises(ValueError, match="checkpoint_dir"):
        rec.log_checkpoint(1, str(tmp_path / "elsewhere.pt"))

"""The named queries the app calls, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os
import uuid

import pytest

from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.store import lifecycle, queries
from grpo_guard.store.db import RunNotFoundError, StoreError, artifacts_root
from grpo_guard.store.recorder import StoreRecorder
from grpo_guard.training.recording import Sample, StepStat


def _cfg(**kw) -> RunConfig:
    return RunConfig.from_dict({"epochs": 50, "num_steps": 4, **kw})


def _fill(run_id: int, steps: int, *, T: int = 4, samples_every: int = 10, seeds=(0, 1)) -> None:
    with StoreRecorder(run_id, background=False) as rec:
        for step in range(steps):
            rec.log_scalars(step, {"loss": 1.0 / (step + 1), "lr": 1e-4})
            rec.log_step_stats([StepStat(step, j, 1 - j / T, 1 / T, {"grad_norm_v": step * 10 + j,
                                                                      "clip_high": 0.5, "extra_stat": -j})
                                for j in range(T)])
            if step % samples_every == 0:
                for prompt in ("a red circle", "a blue square"):
                    for seed in seeds:
                        rec.log_sample(Sample(step, prompt, seed, b"png-bytes", {"toy": 0.5}, proxy=step / 100,
                                              gold=1 - step / 100))
            rec.set_progress(step, steps)
        rec.log_checkpoint(steps - 1, os.path.join(rec.checkpoint_dir(), "ckpt.pt"), {"k": 1})
        rec.log_line("hello", "info")
        rec.log_line("careful", "warning")


def test_create_and_get_run_round_trips_the_config(store):
    cfg = _cfg(algorithm="flow_grpo", group_size=4)
    rid = queries.create_run(cfg, tags=["exp", "exp", " a "], pair_id="pair-1")
    row = queries.get_run(rid)
    assert row.status == "queued" and row.attempt == 1 and row.total == 50 and row.step == 0
    assert RunConfig.from_dict(row.config) == cfg
    assert set(row.config_fields_set) == {"epochs", "num_steps", "algorithm", "group_size"}
    assert row.tags == ("a", "exp") and row.pair_id == "pair-1" and row.name == f"flow_grpo-toy-{rid}"
    assert row.created_at.tzinfo is not None and row.config_error is None


def test_get_run_of_a_missing_id_raises_lookup_error(store):
    with pytest.raises(LookupError):
        queries.get_run(10**9)
    with pytest.raises(RunNotFoundError):
        queries.request_stop(10**9)


def test_list_runs_filters_orders_and_carries_latest_eval(store):
    tag = "t-" + uuid.uuid4().hex[:6]
    a = queries.create_run(_cfg(), name=f"alpha {tag}", tags=[tag])
    b = queries.create_run(_cfg(algorithm="flow_grpo"), name=f"beta {tag}", tags=[tag])
    _fill(b, 25)
    rows = queries.list_runs(tag=tag)
    assert [r.id for r in rows] == [b, a], "newest first"
    top = rows[0]
    assert top.latest_eval_step == 20 and top.latest_proxy == pytest.approx(0.20) and top.latest_gold == pytest.approx(0.80)
    assert [r.id for r in queries.list_runs(tag=tag, order_by="name", descending=False)] == [a, b]
    assert [r.id for r in queries.list_runs(text=f"beta {tag}")] == [b]
    assert [r.id for r in queries.list_runs(tag=tag, status="queued")] == [b, a]
    assert {r.id for r in queries.list_runs(tag=tag, status=["queued"])} == {a, b}
    assert queries.list_runs(tag=tag, status="failed") == []
    with pytest.raises(ValueError):
        queries.list_runs(order_by="config_json; drop table runs")
    with pytest.raises(ValueError):
        queries.list_runs(status="exploded")


def test_eta_and_staleness_of_a_running_run(store, monkeypatch):
    rid = queries.create_run(_cfg())
    claim = lifecycle.claim_run(rid, worker_host="box", worker_gpu="0")
    with StoreRecorder(rid, lease=claim.lease, background=False) as rec:
        rec.set_progress(10, 50)
    (row,) = [r for r in queries.list_runs(status="running") if r.id == rid]
    assert row.eta_seconds is not None and row.eta_seconds > 0 and not row.stale
    assert row.worker_host == "box" and row.worker_gpu == "0"
    monkeypatch.setenv("GG_STALE_AFTER", "1")
    import time

    time.sleep(1.2)
    (row,) = [r for r in queries.list_runs(status="running") if r.id == rid]
    assert row.stale
    lifecycle.finish_run(rid, claim.lease, "succeeded")


def test_stop_cancels_a_queued_run_and_flags_a_running_one(store):
    q = queries.create_run(_cfg())
    assert queries.request_stop(q) == "cancelled"
    assert queries.get_run(q).finished_at is not None
    r = queries.create_run(_cfg())
    claim = lifecycle.claim_run(r, worker_host="h")
    assert queries.request_stop(r) == "stopping"
    row = queries.get_run(r)
    assert row.stop_requested and row.status == "stopping"
    assert lifecycle.claim_run(q, worker_host="h") is None, "a cancelled run must never start"
    lifecycle.finish_run(r, claim.lease, "cancelled")
    assert queries.request_stop(r) == "cancelled"


def test_sample_and_save_flags_only_for_active_runs(store):
    r = queries.create_run(_cfg())
    assert queries.request_sample_now(r) and queries.request_save_now(r)
    row = queries.get_run(r)
    assert row.sample_now and row.save_now
    queries.request_stop(r)
    assert not queries.request_sample_now(r)


def test_tags_and_notes(store):
    r = queries.create_run(_cfg(), tags=["x"])
    assert queries.set_tags(r, ["b", "a", "b", ""]) == ("a", "b")
    queries.set_notes(r, "lr too high?")
    row = queries.get_run(r)
    assert row.tags == ("a", "b") and row.notes == "lr too high?"
    assert r in [x.id for x in queries.list_runs(text="too high")]
    with pytest.raises(ValueError):
        queries.set_tags(r, ["x" * 101])


def test_resume_only_failed_or_cancelled_and_bumps_attempt(store):
    r = queries.create_run(_cfg())
    with pytest.raises(StoreError, match="only failed, cancelled or interrupted"):
        queries.resume_run(r)
    claim = lifecycle.claim_run(r, worker_host="h")
    lifecycle.finish_run(r, claim.lease, "failed", error="boom", traceback="tb")
    assert queries.resume_run(r) == r
    row = queries.get_run(r)
    assert row.status == "queued" and row.attempt == 2 and row.error is None and row.traceback is None


def test_clone_applies_overrides_and_rederives_defaults(store):
    src = queries.create_run(_cfg(algorithm="grpo_guard"), tags=["orig"])
    new = queries.clone_run(src, {"algorithm": "flow_grpo", "epochs": 7})
    row = queries.get_run(new)
    assert row.parent_id == src and row.status == "queued" and row.tags == ("orig",)
    cfg = RunConfig.from_dict(row.config)
    assert cfg.algorithm == "flow_grpo" and cfg.epochs == 7 and cfg.num_steps == 4
    assert cfg.ratio_norm is False, "the algorithm's defaults must be derived again"
    with pytest.raises(ConfigError):
        queries.clone_run(src, {"group_size": 1})


def test_delete_run_removes_rows_and_artifacts(store):
    r = queries.create_run(_cfg())
    _fill(r, 12)
    run_dir = os.path.join(artifacts_root(), "runs", str(r))
    assert os.path.isdir(run_dir)
    child = queries.clone_run(r)
    queries.delete_run(r)
    assert not os.path.exists(run_dir)
    with pytest.raises(LookupError):
        queries.get_run(r)
    assert queries.metric_series(r, ["loss"]) == {} and queries.samples_for(r) == []
    assert queries.get_run(child).parent_id is None
    running = queries.create_run(_cfg())
    lifecycle.claim_run(running, worker_host="h")
    with pytest.raises(StoreError, match="stop it"):
        queries.delete_run(running)


def test_metric_series_is_downsampled_in_sql_keeping_the_last_point(store):
    r = queries.create_run(_cfg())
    _fill(r, 1001, samples_every=1000)
    assert queries.metric_keys(r) == ["loss", "lr"]
    full = queries.metric_series(r, ["loss"], max_points=5000)
    assert full["loss"][0] == list(range(1001))
    series = queries.metric_series(r, max_points=100)
    steps, values = series["loss"]
    assert len(steps) <= 100 and steps[0] == 0 and steps[-1] == 1000 and steps == sorted(steps)
    assert values[-1] == pytest.approx(1 / 1001)
    inc = queries.metric_series(r, ["loss"], since_step=995)
    assert inc["loss"][0] == [996, 997, 998, 999, 1000]
    assert queries.metric_series(r, ["nope"]) == {}


def test_non_finite_scalars_are_stored_explicitly(store):
    r = queries.create_run(_cfg())
    with StoreRecorder(r, background=False) as rec:
        rec.log_scalars(0, {"a": float("nan"), "b": float("inf"), "c": float("-inf"), "d": 1.5})
    s = queries.metric_series(r)
    assert math.isnan(s["a"][1][0]) and s["b"][1][0] == math.inf and s["c"][1][0] == -math.inf and s["d"][1] == [1.5]


def test_step_stats_matrix_and_series(store):
    r = queries.create_run(_cfg())
    _fill(r, 1000, samples_every=1000)
    assert set(queries.step_stats_keys(r)) == {"sigma", "dt", "grad_norm_v", "clip_high", "extra_stat"}
    steps, js, m = queries.step_stats_matrix(r, "grad_norm_v", max_steps=100)
    assert js == [0, 1, 2, 3] and len(steps) <= 100 and steps[0] == 0 and steps[-1] == 999
    assert all(m[i][j] == steps[i] * 10 + j for i in range(len(steps)) for j in js)
    steps2, _, m2 = queries.step_stats_matrix(r, "extra_stat", max_steps=100)
    assert steps2 == steps and m2[5] == [0.0, -1.0, -2.0, -3.0], "a statistic without a column comes from JSON"
    series = queries.step_stats_series(r, "sigma", max_points=50)
    assert sorted(series) == js and all(len(v[0]) <= 50 and v[0][-1] == 999 for v in series.values())
    assert series[1][1][0] == pytest.approx(0.75)
    _, _, unknown = queries.step_stats_matrix(r, "no_such_stat", max_steps=10)
    assert all(v is None for row in unknown for v in row), "an unknown statistic reads as missing values"
    empty = queries.create_run(_cfg())
    assert queries.step_stats_matrix(empty, "grad_norm_v") == ([], [], [])


def test_samples_queries(store):
    a, b = queries.create_run(_cfg()), queries.create_run(_cfg())
    _fill(a, 31)
    _fill(b, 21)
    assert queries.sample_steps(a) == [0, 10, 20, 30]
    assert queries.sample_prompts(a) == [("a blue square", 0), ("a blue square", 1), ("a red circle", 0), ("a red circle", 1)]
    strip = queries.samples_for(a, prompt="a red circle", seed=1)
    assert [s.step for s in strip] == [0, 10, 20, 30] and strip[1].proxy == pytest.approx(0.1)
    assert strip[0].scores == {"toy": 0.5} and os.path.isfile(queries.artifact_path(strip[0].image_location))
    assert len(queries.samples_for(a, step=10)) == 4
    side = queries.samples_across_runs([b, a, 10**9], "a red circle", 0, 20)
    assert [s.run_id for s in side] == [b, a]
    assert queries.samples_across_runs([a, b], "a red circle", 0, 30)[0].run_id == a


def test_checkpoints_logs_and_max_steps(store):
    r = queries.create_run(_cfg())
    _fill(r, 8)
    (ck,) = queries.checkpoints(r)
    assert ck.step == 7 and ck.meta == {"k": 1} and ck.location == f"runs/{r}/checkpoints/ckpt.pt"
    lines = queries.log_lines(r)
    assert [ln.message for ln in lines] == ["hello", "careful"]
    assert [ln.message for ln in queries.log_lines(r, level="warning")] == ["careful"]
    assert [ln.message for ln in queries.log_lines(r, tail=1)] == ["careful"]
    empty = queries.create_run(_cfg())
    assert queries.max_steps([r, empty, 10**9]) == {r: 7, empty: -1}


def test_checkpoints_flag_files_that_are_gone(store):
    """A pruned checkpoint stays as a row (history) but is no longer offered as on disk."""
    r = queries.create_run(_cfg())
    _fill(r, 4)
    (ck,) = queries.checkpoints(r)
    path = queries.artifact_path(ck.location)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"weights")
    assert [c.on_disk for c in queries.checkpoints(r)] == [True]
    os.remove(path)
    (gone,) = queries.checkpoints(r)
    assert gone.step == ck.step and gone.on_disk is False and gone.to_dict()["on_disk"] is False


def test_artifact_path_refuses_escapes(store, tmp_path):
    root = artifacts_root()
    os.makedirs(root, exist_ok=True)
    assert queries.artifact_path("runs/1/x.png") == os.path.join(os.path.realpath(root), "runs", "1", "x.png")
    for bad in ("../etc/passwd", "/etc/passwd", "runs/../../x", "", "a/\x00b"):
        with pytest.raises(ValueError):
            queries.artifact_path(bad)
    link = os.path.join(root, "evil")
    if not os.path.lexists(link):
        os.symlink(str(tmp_path), link)
    with pytest.raises(ValueError, match="outside"):
        queries.artifact_path("evil/file.png")


def test_downsampling_handles_steps_with_gaps(store):
    """Series logged every k steps (eval metrics, sparse stats) still come back within budget,
    ascending, with their last point."""
    r = queries.create_run(_cfg())
    with StoreRecorder(r, background=False) as rec:
        for step in range(0, 3000, 7):
            rec.log_scalars(step, {"eval/gold": step / 3000})
            rec.log_step_stats([StepStat(step, j, 0.5, 0.1, {"grad_norm_v": float(step)}) for j in range(3)])
        for step in range(3000):
            rec.log_scalars(step, {"loss": 1.0})
    last = max(range(0, 3000, 7))
    series = queries.metric_series(r, max_points=50)
    for key, (steps, _values) in series.items():
        assert len(steps) <= 50 and steps == sorted(steps) and len(steps) >= 40, (key, len(steps))
    assert series["eval/gold"][0][-1] == last and series["loss"][0][-1] == 2999
    steps, js, m = queries.step_stats_matrix(r, "grad_norm_v", max_steps=30)
    assert 20 <= len(steps) <= 30 and steps[-1] == last and steps == sorted(steps) and js == [0, 1, 2]
    assert all(row == [float(s)] * 3 for s, row in zip(steps, m, strict=True))
    lines = queries.step_stats_series(r, "grad_norm_v", max_points=30)
    assert all(v[0] == steps for v in lines.values())


def test_a_runs_summary_is_found_by_id_however_many_runs_came_after(store):
    old = queries.create_run(_cfg(), name="an old run")
    for _ in range(3):
        queries.create_run(_cfg(), name=f"newer {old}")  # a text search for the id would match these first
    summary = queries.get_run_summary(old)
    assert summary.id == old and summary.name == "an old run" and summary.status == "queued"
    assert summary == next(r for r in queries.list_runs(limit=10_000) if r.id == old)
    with pytest.raises(RunNotFoundError):
        queries.get_run_summary(10**9)


def test_pair_queries_return_the_linked_runs_oldest_first(store):
    pair = "pair-" + uuid.uuid4().hex[:8]
    a = queries.create_run(_cfg(algorithm="flow_grpo"), pair_id=pair)
    queries.create_run(_cfg())  # unrelated
    b = queries.create_run(_cfg(), pair_id=pair)
    alone = queries.create_run(_cfg())
    assert [r.id for r in queries.pair_runs(pair)] == [a, b]
    assert queries.pair_of(b) == queries.pair_of(a) == [a, b]
    assert queries.pair_of(alone) == [alone] and queries.pair_runs("no-such-pair") == []
    with pytest.raises(RunNotFoundError):
        queries.pair_of(10**9)


def test_runs_by_id_keeps_the_order_given_and_skips_missing_ids(store):
    a, b = queries.create_run(_cfg()), queries.create_run(_cfg())
    assert [r.id for r in queries.runs_by_id([b, 10**9, a, b])] == [b, a]
    assert queries.runs_by_id([]) == []

"""Run page controls and status text on a store holding a SYNTHETIC A/B pair (finished runs)."""

from __future__ import annotations

from types import SimpleNamespace

from app.pages import run_detail as R


def test_stop_sample_and_save_are_disabled_on_a_finished_run(ab_store):
    rid = ab_store["flow"]
    out = R.render_run(rid, R.poll_cursor(rid), True, None)
    buttons = out[-4:-1]
    assert [b.interactive for b in buttons] == [False, False, False]
    assert all(b.interactive for b in R.controls("running")) and all(b.interactive for b in R.controls("queued"))


def test_stopping_a_finished_run_is_a_warning_not_a_success(ab_store):
    from app.common import stop_run

    html = stop_run(ab_store["flow"])
    assert "gg-warn" in html and "gg-ok" not in html and "nothing to stop" in html


def test_status_tab_says_cpu_for_a_worker_without_a_gpu():
    assert R.worker_text(SimpleNamespace(worker_host="laptop", worker_gpu=None)) == "laptop · CPU"
    assert R.worker_text(SimpleNamespace(worker_host="node1", worker_gpu="0")) == "node1 · GPU 0"
    assert R.worker_text(SimpleNamespace(worker_host=None, worker_gpu=None)) == "—"


def test_the_run_selector_label_carries_no_status_that_could_go_stale():
    run = SimpleNamespace(id=3, name="toy-a", status="queued")
    assert R.run_label(run) == "#3 toy-a"


def test_the_run_page_and_runs_show_say_when_eval_still_samples_the_base_model(store):
    from click.testing import CliRunner

    from app.pages.run_detail import header_html
    from grpo_guard.cli import main
    from grpo_guard.config import RunConfig
    from grpo_guard.store import queries

    late = queries.create_run(RunConfig.from_dict({"epochs": 6, "group_size": 4, "prompts_per_epoch": 2,
                                                   "train_batch_size": 8, "ema_every": 8}))
    fine = queries.create_run(RunConfig.from_dict({"epochs": 6, "ema_every": 1}))
    html = header_html(queries.get_run(late), None, None)
    assert "never leave the base model" in html and "after epoch 8" in html
    assert "gg-ema-note" not in header_html(queries.get_run(fine), None, None)
    out = CliRunner().invoke(main, ["runs", "show", str(late)]).output
    assert "note       The eval weights never leave the base model's" in out, out
    assert [b.interactive for b in R.controls("interrupted")] == [True, False, False], "Stop cancels an interrupted run"

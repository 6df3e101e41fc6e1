"""Runs, Run and Compare pages: their data shaping and redraw functions on a store holding a
SYNTHETIC A/B pair (tests/app/synthetic.py), without a browser."""

from __future__ import annotations

import dataclasses

import numpy as np

from app import figures as F
from app import run_cache
from app.pages import compare as C
from app.pages import run_detail as R
from app.pages import runs as RU


def test_runs_table_shows_status_progress_scores_and_the_alarm(ab_store):
    rows, sig, tags = RU.render([], None, None, "created", True)
    by_id = {r[0]: r for r in rows}
    assert set(by_id) >= set(ab_store.values())
    flow = by_id[ab_store["flow"]]
    assert "over-optimization" in flow[1], "the baseline's hacking onset must show as a badge in the table"
    assert "over-optimization" not in by_id[ab_store["guard"]][1]
    assert "A/B" in flow[1] and 'href="run?run=' in flow[1]
    assert "succeeded" in flow[4] and "60 / 60" in flow[5]
    assert flow[6] != "—" and flow[7] != "—", "latest proxy and gold"
    assert "failed" in by_id[ab_store["failed"]][4] and "SYNTHETIC failure" in by_id[ab_store["failed"]][4]
    assert tags == ["sweep", "synthetic"]
    rows2, sig2, _ = RU.render(["failed"], None, None, "created", True)
    assert [r[0] for r in rows2] == [ab_store["failed"]], "status filter"
    assert [r[0] for r in RU.render([], "sweep", None, "created", True)[0]] == [ab_store["failed"]], "tag filter"
    assert [r[0] for r in RU.render([], None, "broken", "created", True)[0]] == [ab_store["failed"]], "text filter"
    asc = [r[0] for r in RU.render([], None, None, "id", False)[0]]
    assert asc == sorted(asc), "sorting"
    assert RU.render([], None, None, "created", True)[1] == sig, "the signature is stable while nothing changes"


def test_run_page_draws_every_figure_with_data(ab_store):
    rid = ab_store["flow"]
    cur = R.poll_cursor(rid)
    out = R.render_run(rid, cur, False, None)
    figs = dict(zip(R.FIGURE_NAMES, out[: len(R.FIGURE_NAMES)], strict=True))
    for name, fig in figs.items():
        assert not F.is_empty(fig), f"figure {name} is empty on a run with data"
        fig.to_plotly()  # valid Plotly
    header = out[len(R.FIGURE_NAMES)]
    assert "over-optimization" in header and "succeeded" in header
    pg = figs["proxy_gold"].to_plotly()
    assert {t.name for t in pg.data} >= {"proxy reward", "gold", "toy_alignment", "toy_fidelity"}
    assert any("over-optimization" in a.text for a in pg.layout.annotations)
    ckpt_rows, ckpt_files = out[len(R.FIGURE_NAMES) + 1], out[len(R.FIGURE_NAMES) + 2]
    assert [r[0] for r in ckpt_rows] == [30, 59] and len(ckpt_files) == 4, "weights and sidecar per checkpoint"
    assert "SYNTHETIC run" in R.tail_logs(rid, "all")


def test_refresh_reads_only_new_rows_and_skips_unchanged_heatmaps(ab_store):
    """A 1 Hz refresh must not re-read a run's history: new scalars come from a since_step
    query, and the per-step heatmaps are re-read (and resent) only when a column is due."""
    from grpo_guard.store.recorder import StoreRecorder
    from tests.app import synthetic

    rid = ab_store["guard"]
    run_cache.forget(rid)
    cur = R.poll_cursor(rid)
    first = R.render_run(rid, cur, False, None)
    token = first[-1]
    before = run_cache.reads(rid)
    rec = StoreRecorder(rid, background=False)
    rng = np.random.default_rng(0)
    rec.log_scalars(60, synthetic.scalars("grpo_guard", 60, 60, rng, 1e-4))
    rec.close()
    cur2 = R.poll_cursor(rid)
    assert cur2 != cur, "a new step moves the cursor"
    out = R.render_run(rid, cur2, False, token)
    after = run_cache.reads(rid)
    assert after["series_full"] == before["series_full"] and after["series_tail"] == before["series_tail"] + 1
    steps = out[1].to_plotly().data  # rewards figure
    assert any(60 in np.asarray(t.x) for t in steps if t.name == "total reward (mean)"), "the new step is drawn"
    stat_out = out[len(R.SERIES_FIGURES): len(R.FIGURE_NAMES)]
    if after["stats"] == before["stats"]:
        assert all(not hasattr(x, "to_json") for x in stat_out), "unchanged heatmaps are not resent"
    fresh = R.render_run(rid, cur2, False, None)
    assert all(hasattr(x, "to_json") for x in fresh[len(R.SERIES_FIGURES): len(R.FIGURE_NAMES)]), \
        "a page that has not drawn them yet gets every figure"


def test_a_pruned_run_is_read_afresh(ab_store):
    """After a resume prunes rows, the cached series must not keep the pruned steps."""

    class Q:
        def __init__(self, series):
            self.series, self.calls = series, []

        def metric_series(self, run_id, keys, max_points=0, since_step=None):
            self.calls.append(since_step)
            return {k: ([s for s in v[0] if since_step is None or s > since_step],
                        [x for s, x in zip(*v, strict=True) if since_step is None or s > since_step])
                    for k, v in self.series.items()}

    run_cache.forget(999)
    q = Q({"loss": ([0, 1, 2, 3], [1.0, 0.9, 0.8, 0.7])})
    assert run_cache.series(q, 999, ["loss"], 3)["loss"][0] == [0, 1, 2, 3]
    q.series = {"loss": ([0, 1, 2, 3, 4], [1.0, 0.9, 0.85, 0.7, 0.6])}
    got = run_cache.series(q, 999, ["loss"], 4)["loss"]
    assert got == ([0, 1, 2, 3, 4], [1.0, 0.9, 0.85, 0.7, 0.6]), "the overlap re-reads late rows of recent steps"
    assert q.calls == [None, 1]
    q.series = {"loss": ([0, 1], [1.0, 0.5])}
    assert run_cache.series(q, 999, ["loss"], 1)["loss"] == ([0, 1], [1.0, 0.5])
    assert q.calls[-1] is None, "a step going backwards means a full re-read"
    run_cache.forget(999)


def test_compare_defaults_to_the_newest_pair_and_snaps_steps(ab_store):
    from grpo_guard.store import queries

    runs = queries.list_runs()
    assert C.default_selection(runs) == sorted([ab_store["flow"], ab_store["guard"]])
    assert C.snap([0, 10, 20], 15) == 10 and C.snap([0, 10, 20], -5) == 0 and C.snap([], 3) is None
    assert C.snap([0, 10, 20], None) == 20
    steps = list(range(0, 1000, 10))
    rows = C.grid_steps(steps, 500)
    assert len(rows) <= C.MAX_GRID_ROWS + 1 and rows[0] == 0 and rows[-1] == 990 and 500 in rows


def test_compare_grid_and_side_by_side_use_artifact_files(ab_store):
    from grpo_guard.store import db, queries

    a, b = ab_store["flow"], ab_store["guard"]
    samples = queries.samples_for(a, seed=0)
    steps = queries.sample_steps(a)
    prompts = sorted({s.prompt for s in samples})
    html = C.grid_html(samples, steps, prompts, 30, queries.artifact_path)
    assert html.count("<img") == len(steps) * len(prompts)
    assert 'class="gg-chosen"' in html and "step 30" in html
    root = db.artifacts_root()
    assert all(root in p for p in [queries.artifact_path(s.image_location) for s in samples]), "images stay in the root"
    side, grid, a_step, b_step = C.images([a, b], 35, prompts[0], 0, a, a, b)
    assert side.count("<img") == 2 and side.count("step 30") == 2, "one image per run at the shared step (snapped)"
    assert a_step == b_step == 30, "the A/B step fields name the step their images show"
    pair, info, a_step, b_step = C.wipe_panel(a, 35, b, 58, prompts[0], 0)
    assert (a_step, b_step) == (30, 50) and "step 30" in info and "step 50" in info
    pair, info = C.wipe_images(a, 30, b, 30, prompts[0], 0)
    assert len(pair) == 2 and "step 30" in info
    pair, info = C.wipe_images(a, 0, a, 59, prompts[0], 0)
    assert pair[0] != pair[1], "two checkpoints of one run"


def test_compare_metrics_and_config_diff(ab_store):
    a, b = ab_store["flow"], ab_store["guard"]
    proxy, gold, metric, gp = C.metric_panel([a, b], "reward/total/mean", False)
    for fig in (proxy, gold, metric, gp):
        assert not F.is_empty(fig)
        fig.to_plotly()
    assert any(t.mode == "markers" for t in gold.to_plotly().data), "the baseline's onset is marked"
    table = C.config_table([a, b], True)
    fields = [r[0] for r in table.value["data"]]
    assert "algorithm" in fields and "group_size" not in fields


def test_pages_find_a_pair_and_a_runs_summary_however_old_the_runs_are(ab_store, monkeypatch):
    """The Runs page's "Compare with pair", a Compare deep link and the Run page's header do not
    depend on the run being among the newest ones listed."""
    from types import SimpleNamespace

    from grpo_guard.store import queries

    a, b = ab_store["flow"], ab_store["guard"]
    monkeypatch.setattr(queries, "list_runs", lambda **kw: [])  # as if both were older than any list
    assert RU.compare_ids(str(b)) == f"{a},{b}"
    picker, _ = C.on_load(SimpleNamespace(query_params={"runs": f"{b},{a},999999"}))
    assert picker.value == [b, a] and {a, b} <= {v for _, v in picker.choices}, "asked runs are selectable"
    run_cache.forget(a)
    assert R._summary(queries, a).id == a and R._summary(queries, 999999) is None
    run_cache.forget(999999)


def test_stop_is_one_handler_for_the_runs_and_run_pages(ab_store):
    from app.common import stop_run

    assert "nothing to stop" in RU.on_stop(str(ab_store["failed"])) and "is failed" in R.on_stop(ab_store["failed"])
    assert stop_run(ab_store["failed"]) == RU.on_stop(str(ab_store["failed"]))


def test_compare_shows_prompts_with_the_right_article_and_full_grid_headers(ab_store):
    from grpo_guard.store import queries

    assert C.display_prompt("a orange circle on a blue background") == "an orange circle on a blue background"
    assert C.display_prompt("A emerald cube") == "An emerald cube" and C.display_prompt("a red disc") == "a red disc"
    a = ab_store["flow"]
    samples = queries.samples_for(a, seed=0)
    samples = [dataclasses.replace(s, prompt=s.prompt.replace("a red", "a orange")) for s in samples]
    prompts = sorted({s.prompt for s in samples})
    html = C.grid_html(samples, queries.sample_steps(a), prompts, 30, queries.artifact_path)
    assert "a orange" not in html and 'title="an orange circle on a blue background"' in html


def test_runs_actions_appear_only_once_a_run_is_selected(ab_store):
    assert RU.on_selected("")[-1].visible is False
    assert RU.on_selected("999999")[-1].visible is False
    assert RU.on_selected(str(ab_store["flow"]))[-1].visible is True

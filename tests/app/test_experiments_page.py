"""The Experiments page and its figures: the plotted means and bands are the experiment's
statistics, every figure passes Plotly's schema, the list shows progress, and "run as experiment"
on the New-run page stores all its runs or names the arm's bad field."""

from __future__ import annotations

import numpy as np
import pytest

import worker.celery_app
from app.figures import experiment as FE
from app.pages import experiments as P
from app.pages import new_run
from grpo_guard.experiments.report import load_curves
from grpo_guard.experiments.stats import experiment_stats
from grpo_guard.store import queries
from tests.experiment_data import stored_experiment


@pytest.fixture(scope="module")
def eid(store):
    return stored_experiment()


@pytest.fixture
def sent(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(worker.celery_app, "enqueue_run", lambda rid, *, num_gpus=None: calls.append(rid) or "t")
    return calls


def _trace(fig, name):
    return next(t for t in fig.data if t.get("name") == name)


def test_the_figures_plot_the_experiment_statistics(eid):
    stats = experiment_stats(load_curves(eid))
    gold = FE.bands_figure(stats, "gold")
    for arm in ("flow", "guard", "flow/control"):
        steps, est = stats.gold[arm]
        assert np.allclose(_trace(gold, arm)["y"], [e.mean for e in est])
        lo = [t for t in gold.data if t["name"] == f"{arm} 95% CI"]
        assert np.allclose(lo[0]["y"], [e.hi for e in est]) and np.allclose(lo[1]["y"], [e.lo for e in est])
    proxy = FE.bands_figure(stats, "proxy")
    assert {t["name"] for t in proxy.data} == {"flow", "guard", "flow 95% CI", "guard 95% CI"}, "controls: gold only"
    gp = FE.gold_vs_proxy_figure(stats)
    assert np.allclose(_trace(gp, "guard")["x"], stats.levels)
    assert np.allclose(_trace(gp, "guard")["y"], [e.mean for e in stats.gold_at_proxy["guard"]])
    beyond = FE.beyond_noise_figure(stats)
    assert np.allclose(_trace(beyond, "flow")["y"], [e.mean for e in stats.beyond_step["flow"][1]])
    for fig in (gold, proxy, gp, beyond, FE.ratio_figure(stats)):
        fig.to_plotly()  # Plotly's schema check


def test_the_page_renders_the_list_and_the_view(eid):
    rows = P.list_rows(queries.list_experiments())
    assert rows[0][0] == eid and "synthetic study" in rows[0][1] and rows[0][3] == 12 and "(+ controls)" in rows[0][5]
    header, *figs, tables, runs = P.render(eid)
    assert f'data-experiment-id="{eid}"' in header and "compare?runs=" in header
    assert runs.count('href="run?run=') == 12 and "control:" in runs
    assert 'id="exp-equal-proxy"' in tables and 'id="exp-beyond-proxy"' in tables
    assert len(figs) == 5 and P.cursor_of(eid)[0] == eid and P.cursor_of(99999) is None


def test_run_as_experiment_from_the_new_run_form_stores_every_run(store, sent):
    banner, *_ = new_run._submit_experiment({"epochs": 3, "group_size": 2}, "a: {algorithm: flow_grpo}\nb: {}",
                                            "0, 1", True, "from form", "t1", "")
    new = queries.list_experiments()[0]
    assert f'data-experiment-id="{new.id}"' in banner and new.name == "from form" and new.runs == 8
    assert len(sent) == 8 and {queries.get_run(i).config["epochs"] for i in sent} == {3}
    bad, *_ = new_run._submit_experiment({}, "a: {clip_range: -1}", "0", False, "", "", "")
    assert "arms.a.clip_range" in bad and "Nothing was enqueued" in bad
    assert "seeds" in new_run._submit_experiment({}, "a: {}", "zero", False, "", "", "")[0]
    assert queries.list_experiments()[0].id == new.id, "a bad experiment stores nothing"


def test_the_run_page_links_its_experiment_and_marks_the_best_gold_checkpoint(eid):
    from app.pages import run_detail as R
    from grpo_guard.store.artifacts import checkpoint_location, put_bytes
    from grpo_guard.store.recorder import StoreRecorder

    member = queries.experiment_runs(eid)[3]  # guard/control seed 0
    rid = member.run.id
    rec = StoreRecorder(rid)
    for step in (4, 8):
        loc = f"{checkpoint_location(rid)}/ckpt_{step:06d}.pt"
        put_bytes(loc, b"weights")
        rec.log_checkpoint(step, queries.artifact_path(loc), {"best_step": 4})
    rec.close()
    out = R.render_run(rid, R.cursor_of(queries.get_run(rid)), False)
    header, rows, files = out[len(R.SERIES_FIGURES) + len(R.STAT_FIGURES):][:3]
    assert f'href="experiments?experiment={eid}"' in header and "guard/control, seed 0" in header
    assert 'id="run-exp-alarm"' not in header, "a control has no alarm of its own"
    flow = queries.experiment_runs(eid)[0]  # flow seed 0: gold falls below its control's band (tests/experiment_data)
    flow_header = R.render_run(flow.run.id, R.cursor_of(queries.get_run(flow.run.id)), False)[
        len(R.SERIES_FIGURES) + len(R.STAT_FIGURES)]
    assert 'data-method="control"' in flow_header and "⚠ step 4" in flow_header
    assert [r[0] for r in rows if r[3].startswith("★ best gold")] == [4]
    assert files[0].endswith("ckpt_000004.pt"), "the best-gold checkpoint is the first download"


def test_seeds_read_as_seeds_not_as_a_count():
    assert P.seeds_text([0]) == "1 seed: 0" and P.seeds_text([0, 1, 2]) == "3 seeds: 0, 1, 2" and P.seeds_text([]) == "none"
    assert "1 seed: 0" in P.list_rows([queries.get_experiment(queries.create_experiment({"arms": {"a": {}},
                                                                                          "seeds": [0]}))])[0]


def test_the_empty_state_explains_and_starts_the_example_study(store, sent):
    assert "An experiment is arms × seeds" in P.empty_html(True) and "Start the example study" in P.empty_html(True)
    assert "experiment submit benchmarks/overoptimization/experiments/flow_vs_guard.yaml" in P.empty_html(False)
    before = {e.id for e in queries.list_experiments()}
    message, eid = P.start_example()
    assert eid is not None and eid not in before, message
    members = queries.experiment_runs(eid)
    assert sorted(m.arm for m in members) == ["flow_grpo", "flow_grpo/control", "grpo_guard_global_std",
                                             "grpo_guard_global_std/control"]
    assert {m.seed for m in members} == {0} and sorted(sent) == sorted(m.run.id for m in members)
    assert f"experiment #{eid} (4 runs)" in message

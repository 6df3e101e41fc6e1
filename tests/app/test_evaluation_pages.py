"""The evaluation tables of the Run, Compare and Experiments pages read the store: values, the
base column, relative to base, per-arm mean ± 95 % CI over seeds, and the overlap banner."""

import re

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.experiments.stats import t_interval
from grpo_guard.store import evaluations as ev
from grpo_guard.store import queries

PROTO = {"benchmark": "geneval", "images_per_prompt": 4, "num_prompts": 553, "prompts": "geneval:test",
         "detector_scale": [1333, 800], "_request": {"config": {"backbone": "toy", "model": None}}}


def _done(kind, key, metrics, run_id=None, step=None):
    eid = ev.create_evaluation("geneval", ev.ModelRef(kind, key, run_id, step), PROTO, status="running")
    ev.finish_evaluation(eid, metrics, [], None)
    return eid


def _cell(html, **attrs):
    sel = "".join(rf'[^>]*data-{k}="{re.escape(str(v))}"' for k, v in attrs.items())
    m = re.search(rf"<td{sel}[^>]*>([^<]*)", html)
    return m.group(1).strip() if m else None


@pytest.fixture(scope="module")
def stored(store):
    eid = queries.create_experiment({"arms": {"a": {}, "b": {}}})
    runs = {(arm, seed): queries.create_run(RunConfig.from_dict({"seed": seed}), experiment=(eid, arm, seed))
            for arm in ("a", "b") for seed in (0, 1, 2)}
    _done("base", "base:toy:", {"overall": 0.5, "counting": 0.25, "image_mean": 0.55})
    values = {("a", 0): 0.6, ("a", 1): 0.7, ("a", 2): 0.65, ("b", 0): 0.4, ("b", 1): 0.5, ("b", 2): 0.45}
    for (arm, seed), rid in runs.items():
        _done("run", f"run:{rid}:10", {"overall": values[(arm, seed)] - 0.1, "image_mean": 0.1}, rid, 10)
        _done("run", f"run:{rid}:20", {"overall": values[(arm, seed)], "image_mean": 0.2}, rid, 20)  # the latest
    return eid, runs, values


def test_run_page_table_has_the_base_and_every_evaluated_step(stored):
    from app.pages.run_evaluations import evaluations_html

    _, runs, values = stored
    rid = runs[("a", 1)]
    html = evaluations_html(rid)
    rows = ev.evaluations_of([rid])
    assert _cell(html, metric="overall", eval="base") == "0.5000"
    assert _cell(html, metric="overall", eval=rows[1].id) == f"{values[('a', 1)]:.4f}"
    assert "(1.40×)" in html and html.index(">overall<") < html.index(">image_mean<"), "Overall leads"


def test_compare_table_shows_each_runs_latest_evaluation(stored):
    from app.pages.evaluation_tables import compare_html

    _, runs, values = stored
    html = compare_html([runs[("a", 0)], runs[("b", 0)]])
    assert _cell(html, run=runs[("a", 0)], metric="overall") == f"{values[('a', 0)]:.4f}"
    assert _cell(html, run=runs[("b", 0)], metric="overall") == f"{values[('b', 0)]:.4f}"
    assert _cell(html, run="base", metric="overall") == "0.5000"


def test_experiment_table_is_the_mean_and_95ci_over_seeds_per_arm(stored):
    from app.pages.evaluation_tables import experiment_html

    eid, _, values = stored
    html = experiment_html(eid)
    for arm in ("a", "b"):
        est = t_interval([values[(arm, s)] for s in (0, 1, 2)])
        assert _cell(html, arm=arm, metric="overall") == est.fmt()


def test_overlap_banner(store):
    from app.pages.run_evaluations import overlap_html

    same = ["a red circle on a blue background"]
    rid = queries.create_run(RunConfig.from_dict({"prompts": same, "eval_prompts": same}))
    assert "eval prompts are also training prompts" in overlap_html(rid)
    assert overlap_html(queries.create_run(RunConfig.from_dict({}))) == ""

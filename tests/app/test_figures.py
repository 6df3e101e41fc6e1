"""app/figures.py: pure rows -> figures, tested without a browser."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

pytest.importorskip("plotly")

from app import figures as F  # noqa: E402


def _fig_json(fig) -> dict:
    return json.loads(fig.to_json())


def P(fig):
    """The validated plotly Figure: checks every property against Plotly's schema."""
    return fig.to_plotly()


def _figure1_series(n_eval: int = 20, every: int = 5, peak: int = 10):
    """Proxy rises monotonically; gold rises until eval point `peak`, then falls."""
    steps = [i * every for i in range(n_eval)]
    proxy = [0.5 + 0.02 * i for i in range(n_eval)]
    gold = [0.6 + 0.01 * i if i <= peak else 0.6 + 0.01 * peak - 0.02 * (i - peak) for i in range(n_eval)]
    return {"eval/proxy": (steps, proxy), "eval/gold": (steps, gold), "eval/toy_alignment": (steps, gold)}


def test_every_figure_handles_missing_data_with_a_no_data_annotation():
    """A run that has logged nothing yet must give 'no data yet' figures, never an exception."""
    figs = [
        F.proxy_gold_figure({}),
        F.proxy_gold_figure(None),
        F.reward_figure({}),
        F.stat_heatmap([], [], None, stat="r_mean_minus_1"),
        F.stat_heatmap([1, 2], [0, 1], [[None, None], [None, None]], stat="r_std"),
        F.clip_by_sign_figure([], [], {}),
        F.grad_norm_figure(None, None, None),
        F.scalars_figure({}, ["kl", "lr"]),
        F.overlay_figure({}, "eval/proxy"),
        F.overlay_figure({"a": {}}, "eval/gold"),
        F.gold_vs_proxy_figure({"a": {"eval/proxy": ([0], [1.0])}}),
    ]
    for fig in figs:
        assert F.is_empty(fig), f"expected an empty figure, got traces in {fig!r}"
        texts = " ".join(a.text for a in P(fig).layout.annotations)
        assert "no" in texts, f"an empty figure must say why it is empty: {texts!r}"


def test_proxy_gold_figure_defaults_to_one_axis_relative_to_the_base_model_with_raw_values_in_the_hover():
    steps = [0, 10]
    fig = P(F.proxy_gold_figure({"eval/proxy": (steps, [0.600, 0.603]), "eval/gold": (steps, [0.500, 0.4985])}))
    names = {t.name: t for t in fig.data}
    assert {"proxy reward", "gold"} <= set(names), "Figure 1 needs both proxy and gold curves"
    assert {t.yaxis or "y" for t in fig.data} == {"y"} and "yaxis2" not in fig.to_plotly_json()["layout"], "one shared axis"
    assert np.allclose(np.asarray(names["proxy reward"].y), [1.0, 1.005])
    assert np.allclose(np.asarray(names["gold"].y), [1.0, 0.997])
    assert np.allclose(np.asarray(names["gold"].customdata), [0.5, 0.4985]), "raw values for the hover"
    assert "customdata" in names["gold"].hovertemplate
    assert "step 0 = 1.00" in fig.layout.yaxis.title.text
    assert not fig.layout.shapes, "no onset given: no over-optimization marker"


def test_proxy_gold_raw_mode_puts_gold_on_the_secondary_axis():
    fig = P(F.proxy_gold_figure(_figure1_series(), normalize=False))
    names = {t.name: t for t in fig.data}
    assert names["gold"].yaxis == "y2", "raw gold must use its own (right) axis"
    assert fig.layout.yaxis2.overlaying == "y"


def test_a_lone_first_eval_point_sits_on_the_runs_step_axis():
    fig = P(F.proxy_gold_figure({"eval/proxy": ([0], [0.6]), "eval/gold": ([0], [0.5])}, x_max=10))
    lo, hi = fig.layout.xaxis.range
    assert lo <= 0 and hi >= 10, "the x-axis spans the run's planned steps, not 0-1"
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d", "whole steps only"


def test_over_optimization_onset_marks_the_gold_peak_region():
    """ALGORITHM.md §10: the alarm fires after gold has started falling while proxy rises."""
    series = _figure1_series()
    onset = F.over_optimization_onset(series)
    assert onset is not None, "gold falls for 9 eval points while proxy rises: the alarm must fire"
    assert 50 < onset <= 75, f"onset {onset} should be shortly after the gold peak at step 50"
    fig = P(F.proxy_gold_figure(series, onset=onset))
    assert any(s.type == "line" and s.x0 == onset for s in fig.layout.shapes), "onset needs a vertical marker"
    assert any("over-optimization" in a.text for a in fig.layout.annotations), "onset needs a label"


def test_over_optimization_onset_is_none_while_gold_improves():
    steps = list(range(0, 100, 5))
    series = {"eval/proxy": (steps, [i * 0.1 for i in range(20)]), "eval/gold": (steps, [i * 0.05 for i in range(20)])}
    assert F.over_optimization_onset(series) is None
    assert F.over_optimization_onset({}) is None


def test_over_optimization_onset_aligns_proxy_and_gold_on_shared_steps():
    """Gold evaluated on fewer steps than the proxy (or with NaN points) must not misalign."""
    s = _figure1_series()
    steps, proxy = s["eval/proxy"]
    extra_steps = [st + 1 for st in steps]  # proxy also logged at off-eval steps
    merged = sorted(zip(steps + extra_steps, proxy + proxy, strict=True))
    series = {"eval/proxy": ([a for a, _ in merged], [b for _, b in merged]),
              "eval/gold": (steps, [*s["eval/gold"][1][:-1], None])}
    assert F.over_optimization_onset(series) is not None


def test_normalize_divides_by_the_step0_value():
    steps = [0, 10, 20]
    fig = P(F.proxy_gold_figure({"eval/proxy": (steps, [2.0, 3.0, 4.0]), "eval/gold": (steps, [0.5, 0.55, 0.4])},
                                normalize=True))
    gold = next(t for t in fig.data if t.name == "gold")
    assert np.allclose(np.asarray(gold.y), [1.0, 1.1, 0.8]), "gold must be relative to the base model (step 0)"
    assert "step 0" in fig.layout.yaxis.title.text


def test_the_onset_marker_sits_on_the_drawn_gold_curve_in_both_modes():
    series = _figure1_series()
    onset = F.over_optimization_onset(series)
    for normalize in (True, False):
        fig = P(F.proxy_gold_figure(series, onset=onset, normalize=normalize))
        gold = next(t for t in fig.data if t.name == "gold")
        mark = next(t for t in fig.data if t.name == "over-optimization onset")
        i = list(np.asarray(gold.x)).index(onset)
        assert math.isclose(mark.y[0], np.asarray(gold.y)[i]) and (mark.yaxis or "y") == (gold.yaxis or "y")


def test_gold_keys_lists_individual_evaluators_only():
    keys = ["eval/proxy", "eval/gold", "eval/gold_rel", "eval/toy_alignment", "eval/proxy/toy_fg_share",
            "reward/total/mean", "eval/fidelity", "eval/toy_fg_share"]
    assert F.gold_keys(keys, ["toy_alignment", "fidelity", "not_logged"]) == ["eval/toy_alignment", "eval/fidelity"]
    assert "eval/gold_rel" not in F.gold_keys(keys), "the relative gold is not an evaluator"


def test_gold_keys_add_evaluator_breakdowns_such_as_geneval_families():
    keys = ["eval/proxy", "eval/gold", "eval/geneval", "eval/pickscore", "eval/geneval/image_mean",
            "eval/geneval/counting", "eval/geneval/overall", "eval/proxy/geneval", "eval/gold/x"]
    want = ["eval/geneval/overall", "eval/geneval/counting", "eval/geneval/image_mean"]  # Overall leads
    assert F.gold_keys(keys, ["pickscore"]) == ["eval/pickscore", *want]
    assert F.gold_keys(keys) == ["eval/geneval", "eval/pickscore", *want]


def test_the_trainers_own_alarm_wins_over_the_recomputed_onset():
    """The trainer computes the onset on its full history; the UI's series may be downsampled."""
    series = {**_figure1_series(), F.ALARM_KEY: ([70], [70.0])}
    assert F.onset_of_run(series) == 70
    assert F.onset_of_run(_figure1_series()) == F.over_optimization_onset(_figure1_series())


def test_reward_figure_draws_a_std_band_and_group_stats():
    steps = list(range(50))
    series = {"reward/total/mean": (steps, np.linspace(0, 1, 50)), "reward/total/std": (steps, np.full(50, 0.1)),
              "zero_std_ratio": (steps, np.full(50, 0.05)), "adv_abs_mean": (steps, np.full(50, 0.8)),
              "reward/toy_fg_share/mean": (steps, np.linspace(0, 1, 50))}
    fig = P(F.reward_figure(series))
    names = [t.name for t in fig.data]
    assert "± std" in names and "total reward (mean)" in names and "zero_std_ratio" in names and "mean |A|" in names
    assert "reward/toy_fg_share/mean" in names
    band = next(t for t in fig.data if t.name == "± std")
    assert len(band.x) == 100, "the band is the upper edge then the lower edge reversed"


def test_stat_heatmap_orientation_is_step_by_denoising_step():
    steps, js = [1, 2, 3], [0, 1]
    m = [[0.0, -1e-3], [0.0, -2e-3], [1e-4, -3e-3]]
    fig = P(F.stat_heatmap(steps, js, m, stat="r_mean_minus_1"))
    hm = fig.data[0]
    z = np.asarray(hm.z)
    assert z.shape == (2, 3), "z is (denoising steps, optimizer steps): y = j, x = step"
    assert z[1, 2] == pytest.approx(-3e-3, rel=1e-6)
    assert hm.zmid == 0 and hm.zmin == -hm.zmax, "signed stats use a diverging scale centred on 0"
    fig2 = P(F.stat_heatmap(steps, js, np.abs(np.asarray(m)), stat="r_std"))
    assert fig2.data[0].zmid is None


def test_stat_heatmap_tolerates_ragged_rows():
    fig = P(F.stat_heatmap([1, 2], [0, 1, 2], [[1.0], [1.0, 2.0, 3.0, 4.0]], stat="r_std"))
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3, 2) and math.isnan(z[2, 0])


def test_clip_by_sign_uses_the_recent_window():
    steps = list(range(20))
    js = [0, 1, 2]
    pos = [[0.0, 0.0, 0.0]] * 10 + [[0.5, 0.4, 0.3]] * 10
    neg = [[0.05, 0.2, 0.8]] * 20
    fig = P(F.clip_by_sign_figure(steps, js, {"pos_adv_clipped": pos, "neg_adv_clipped": neg}, window=10))
    bars = {t.name: np.asarray(t.y) for t in fig.data}
    assert np.allclose(bars["A>0 ∧ r>1+ε"], [0.5, 0.4, 0.3]), "only the last 10 steps count"
    assert np.allclose(bars["A<0 ∧ r<1−ε"], [0.05, 0.2, 0.8])


def test_grad_norm_spread_is_max_over_min_per_step():
    steps, js = [0, 1], [0, 1, 2]
    m = [[1.0, 2.0, 26.0], [1.0, 1.5, 2.0]]
    fig = P(F.grad_norm_figure(steps, js, m))
    spread = next(t for t in fig.data if t.name == "max/min")
    assert np.allclose(np.asarray(spread.y), [26.0, 2.0])
    assert fig.layout.yaxis2.type == "log"


def test_scalars_figure_keeps_a_panel_for_missing_keys():
    fig = P(F.scalars_figure({"lr": ([0, 1], [0.1, 0.2])}, ["kl", "lr", "grad_norm"], missing={"kl": "not used"}))
    assert len(fig.data) == 1
    assert fig.layout.xaxis3.domain is not None, "three keys -> three panels"
    texts = [a.text for a in fig.layout.annotations]
    assert "no data yet" in texts and "not used" in texts


def test_overlay_figure_colours_runs_consistently_and_marks_onsets():
    s = _figure1_series()
    runs = {"#1 flow_grpo": s, "#2 grpo_guard": {"eval/proxy": s["eval/proxy"]}}
    fig = P(F.overlay_figure(runs, "eval/proxy", onsets={"#1 flow_grpo": 60}))
    lines = [t for t in fig.data if t.mode != "markers"]
    assert [t.name for t in lines] == ["#1 flow_grpo", "#2 grpo_guard"]
    assert lines[0].line.color != lines[1].line.color
    assert any(t.mode == "markers" and list(t.x) == [60] for t in fig.data)


def test_gold_vs_proxy_pairs_points_by_step():
    runs = {"a": {"eval/proxy": ([0, 5, 10], [0.1, 0.2, 0.3]), "eval/gold": ([0, 10], [1.0, 0.9])}}
    fig = P(F.gold_vs_proxy_figure(runs))
    assert list(fig.data[0].x) == [0.1, 0.3] and list(fig.data[0].y) == [1.0, 0.9]


def test_config_diff_shows_only_differences_by_default():
    a = {"algorithm": "flow_grpo", "group_size": 8, "clip_range": 8e-4, "rewards": {"x": 1.0}}
    b = {"algorithm": "grpo_guard", "group_size": 8, "clip_range": 1.5e-4, "rewards": {"x": 1.0}}
    headers, rows = F.config_diff({"#1": a, "#2": b})
    assert headers == ["field", "#1", "#2"]
    assert [r[0] for r in rows] == ["algorithm", "clip_range"]
    _, all_rows = F.config_diff({"#1": a, "#2": b}, only_differences=False)
    assert len(all_rows) == 4


def test_uirevision_is_stable_so_zoom_survives_refresh():
    """STACK.md PL3: Plotly.react keeps zoom only if uirevision does not change between refreshes."""
    s1 = _figure1_series(10)
    s2 = _figure1_series(20)
    f1 = P(F.proxy_gold_figure(s1, uirevision="run-3-fig1"))
    f2 = P(F.proxy_gold_figure(s2, uirevision="run-3-fig1"))
    assert f1.layout.uirevision == f2.layout.uirevision == "run-3-fig1"


def test_figures_are_cheap_for_a_5000_step_run():
    """The Run page builds these figures on a first render (~20 ms on an idle 2-core machine;
    benchmarks/ui has the real numbers). The bound is loose because the test machine is shared;
    it catches a return to Plotly's object model (~10x slower)."""
    n = 1000  # what the store returns after SQL downsampling (max_points)
    steps = np.arange(0, 5000, 5)
    series = {k: (steps, np.random.rand(n)) for k in ("reward/total/mean", "reward/total/std", "zero_std_ratio", "adv_abs_mean",
                                                       "kl", "lr", "grad_norm", "policy_loss")}
    ev = np.arange(0, 5000, 50)
    series.update({"eval/proxy": (ev, np.linspace(0, 1, ev.size)), "eval/gold": (ev, np.random.rand(ev.size))})
    hs = np.arange(0, 5000, 25)
    m = np.random.rand(hs.size, 9)
    F.proxy_gold_figure(series)  # warm plotly's lazy validators
    t = time.perf_counter()
    figs = [F.proxy_gold_figure(series, onset=F.over_optimization_onset(series)), P(F.reward_figure(series)),
            *(F.stat_heatmap(hs, range(9), m, stat=st) for st in ("r_mean_minus_1", "r_std", "rhat_mean_minus_1", "rhat_std")),
            F.clip_by_sign_figure(hs, range(9), {"pos_adv_clipped": m, "neg_adv_clipped": m}),
            F.grad_norm_figure(hs, range(9), m), F.scalars_figure(series, ["kl", "lr", "grad_norm", "policy_loss"])]
    for f in figs:
        f.to_json()
    dt = time.perf_counter() - t
    assert dt < 0.5, f"building and serialising the Run page figures took {dt * 1000:.0f} ms"
    assert all(_fig_json(f)["layout"]["uirevision"] for f in figs)


def test_fig_json_uses_typed_arrays_plotly_can_read():
    """STACK.md PL4: numpy goes out as base64 typed arrays; plotly.py decodes them back."""
    steps = np.arange(0, 3000, 3)
    fig = F.reward_figure({"reward/total/mean": (steps, np.linspace(0, 1, steps.size))})
    d = _fig_json(fig)
    line = next(t for t in d["data"] if t["name"] == "total reward (mean)")
    assert set(line["x"]) == {"dtype", "bdata"} and line["x"]["dtype"] == "i2", "int64 steps are narrowed to int16"
    back = P(fig)
    assert np.array_equal(np.asarray(next(t for t in back.data if t.name == "total reward (mean)").x), steps)
    hm = _fig_json(F.stat_heatmap([1, 2, 3], [0, 1], np.ones((3, 2)), stat="r_std"))["data"][0]
    assert hm["z"]["shape"] == "2, 3", "2-D arrays carry their shape"


def test_clip_fraction_axis_prints_distinct_percentages_for_small_shares():
    steps, js = [0], [0, 1, 2]
    fig = P(F.clip_by_sign_figure(steps, js, {"pos_adv_clipped": [[0.0, 0.001, 0.003]],
                                             "neg_adv_clipped": [[0.002, 0.0, 0.0]]}))
    lo, hi = fig.layout.yaxis.range
    fmt = fig.layout.yaxis.tickformat
    ticks = [format(t, fmt[1:].replace("%", "") + "%") for t in np.linspace(lo, hi, 5)]
    assert len(set(ticks)) == 5, f"ticks must be distinct, got {ticks}"
    assert "last 1 steps" not in fig.layout.title.text + fig.layout.xaxis.title.text
    assert "the last step" in fig.layout.xaxis.title.text
    assert len(fig.layout.title.text) <= 40, "a long title runs under the chart toolbar"


def test_log_axes_tick_at_powers_of_ten_only():
    steps, js = list(range(5)), [0, 1, 2]
    m = [[1e-3, 4e-3, 2e-2]] * 5
    fig = P(F.grad_norm_figure(steps, js, m))
    for ax in (fig.layout.yaxis, fig.layout.yaxis2):
        assert ax.type == "log" and ax.dtick == 1
        assert ax.range[1] - ax.range[0] >= 1, "at least one decade, so a tick shows"
    sc = P(F.scalars_figure({"lr": ([0, 1, 2], [1e-4, 1e-4, 1e-4])}, ["lr"], log_y=("lr",)))
    assert sc.layout.yaxis.dtick == 1 and sc.layout.yaxis.range[1] - sc.layout.yaxis.range[0] >= 1


def test_step_axes_tick_whole_steps_while_there_are_few():
    few = {"reward/total/mean": ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]), "zero_std_ratio": ([1, 2, 3, 4], [0, 0, 0, 0])}
    fig = P(F.reward_figure(few))
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis2.dtick == 1
    heat = P(F.stat_heatmap([1, 2, 3], [0, 1], [[1, 2], [3, 4], [5, 6]], stat="r_std"))
    assert heat.layout.xaxis.dtick == 1
    many = {"reward/total/mean": (list(range(100)), [0.1] * 100)}
    assert P(F.reward_figure(many)).layout.xaxis.dtick is None, "Plotly picks the ticks of a long run"

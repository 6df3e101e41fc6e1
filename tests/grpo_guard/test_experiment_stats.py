"""Experiment statistics against hand-computed cases: the 95 % t-interval over seeds, gold at
equal proxy by linear interpolation, the equal-proxy levels every run reaches, gold lost beyond
a paired no-signal control, and the alarm that uses the control when there is one."""

from __future__ import annotations

import math

import pytest

from grpo_guard.experiments.alarm import alarm_verdict
from grpo_guard.experiments.stats import (
    RunCurves,
    band,
    beyond_noise_at_proxy,
    beyond_noise_by_step,
    equal_proxy_levels,
    experiment_stats,
    gold_at_proxy,
    t_interval,
)

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (tables)


def _run(arm, seed, proxy, gold, steps=None, parts=None, weights=None, rid=0):
    steps = steps or list(range(0, 4 * len(proxy), 4))
    return RunCurves(rid or hash((arm, seed)) % 10_000, arm, seed, steps, proxy, gold, parts or {},
                     weights or {"p": 1.0})


def test_t_interval_is_mean_plus_minus_t_quantile_times_standard_error():
    est = t_interval([1.0, 2.0, 3.0])
    assert est.mean == pytest.approx(2.0)
    assert est.half == pytest.approx(T_975_2 * 1.0 / math.sqrt(3), rel=1e-9), "s = 1 (ddof 1), n = 3"
    assert (est.lo, est.hi) == pytest.approx((2.0 - est.half, 2.0 + est.half))
    one = t_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.half) and one.fmt() == "0.7000", "one seed: no interval"
    assert t_interval([float("nan"), 1.0, 3.0]).n == 2, "non-finite values are not seeds"


def test_gold_at_proxy_interpolates_linearly_at_the_first_crossing():
    proxy, gold = [0.1, 0.3, 0.5, 0.2, 0.6], [0.9, 0.7, 0.8, 0.1, 0.0]
    assert gold_at_proxy(proxy, gold, 0.4) == pytest.approx(0.75), "halfway from (0.3, 0.7) to (0.5, 0.8)"
    assert gold_at_proxy(proxy, gold, 0.2) == pytest.approx(0.8), "halfway from (0.1, 0.9) to (0.3, 0.7)"
    assert gold_at_proxy(proxy, gold, 0.05) == 0.9, "already reached at the first point"
    assert gold_at_proxy(proxy, gold, 0.55) == pytest.approx(0.0125), "first crossing: 7/8 of 0.2 -> 0.6"
    assert gold_at_proxy(proxy, gold, 0.7) is None


def test_equal_proxy_levels_lie_between_the_highest_start_and_the_lowest_peak():
    runs = [_run("a", 0, [0.1, 0.5], [1, 1]), _run("b", 0, [0.2, 0.7, 0.6], [1, 1, 1])]
    assert equal_proxy_levels(runs) == pytest.approx([0.26, 0.32, 0.38, 0.44, 0.5])
    assert equal_proxy_levels([_run("a", 0, [0.5, 0.4], [1, 1]), *runs]) == [], "a run that never rises"


def test_band_uses_the_steps_every_seed_has():
    runs = [_run("a", s, [0.1, 0.2, 0.3], g, steps=st) for s, g, st in
            [(0, [1.0, 2.0, 3.0], [0, 4, 8]), (1, [2.0, 3.0, 4.0], [0, 4, 8]), (2, [3.0, 4.0], [0, 4])]]
    steps, est = band(runs, "gold")
    assert steps == [0, 4]
    assert [e.mean for e in est] == pytest.approx([2.0, 3.0])
    assert [e.half for e in est] == pytest.approx([T_975_2 / math.sqrt(3)] * 2)


def test_gold_beyond_noise_is_paired_by_seed_at_equal_step_and_equal_proxy():
    arm = [_run("x", s, [0.1, 0.3, 0.5], [0.6, g, g - 0.1]) for s, g in [(0, 0.5), (1, 0.6), (2, 0.7)]]
    # the controls score the arm's proxy reward "p" on their own images (parts), near flat
    ctrl = [_run("x/control", s, [0.5, 0.4, 0.6], [0.6, 0.6, 0.55], parts={"p": [0.1, 0.2, 0.3]}) for s in (0, 1, 2)]
    steps, est = beyond_noise_by_step(arm, ctrl)
    assert steps == [0, 4, 8]
    assert est[1].mean == pytest.approx(0.0) and est[1].half == pytest.approx(T_975_2 * 0.1 / math.sqrt(3))
    assert est[2].mean == pytest.approx(-0.05)
    (at_02, at_04) = beyond_noise_at_proxy(arm, ctrl, [0.2, 0.4])
    # at proxy 0.2: arm gold = 0.6 + (g − 0.6)/2; control path (0.1→0.2) reaches 0.2 at its step 4: 0.6
    assert at_02.mean == pytest.approx(((0.55 - 0.6) + (0.6 - 0.6) + (0.65 - 0.6)) / 3)
    assert at_04.n == 0, "the control's path never reaches 0.4: undefined, not zero"


def test_alarm_against_the_control_fires_when_gold_leaves_its_band_while_proxy_rises():
    steps, proxy = [0, 4, 8, 12], [0.1, 0.2, 0.3, 0.4]
    verdict = alarm_verdict(steps, proxy, [0.6, 0.59, 0.5, 0.4], {0: 0.55, 4: 0.55, 8: 0.54, 12: 0.53})
    assert (verdict.onset, verdict.method) == (8, "control") and "control" in verdict.note
    calm = alarm_verdict(steps, proxy, [0.6, 0.59, 0.58, 0.57], {0: 0.55, 4: 0.55, 8: 0.54, 12: 0.53})
    assert calm.onset is None and calm.method == "control"
    falling_proxy = alarm_verdict(steps, [0.4, 0.3, 0.2, 0.1], [0.6, 0.5, 0.4, 0.3], {s: 0.55 for s in steps})
    assert falling_proxy.onset is None, "gold below the band while the proxy falls is not over-optimisation"
    alone = alarm_verdict(steps, proxy, [0.6, 0.5, 0.4, 0.3])
    assert alone.method == "trend" and "cannot tell" in alone.note


def test_experiment_stats_gather_bands_equal_proxy_and_beyond_noise_per_arm():
    runs = [_run("a", s, [0.1, 0.3, 0.5], [0.6, 0.55 + s / 100, 0.5], rid=10 + s) for s in range(3)]
    runs += [_run("b", s, [0.2, 0.4, 0.6], [0.6, 0.6, 0.6], rid=20 + s) for s in range(3)]
    runs += [_run("a/control", s, [0.5, 0.5, 0.5], [0.6, 0.6, 0.6], parts={"p": [0.1, 0.2, 0.3]}, rid=30 + s)
             for s in range(3)]
    st = experiment_stats(runs)
    assert st.arms == ["a", "b", "a/control"]
    assert set(st.gold_at_proxy) == {"a", "b"}, "controls optimise another reward: no equal-proxy row"
    assert st.levels == pytest.approx(equal_proxy_levels(runs[:6]))
    assert set(st.beyond_step) == {"a"} and [v.method for v in st.alarms["a"]] == ["control"] * 3
    assert [v.method for v in st.alarms["b"]] == ["trend"] * 3
    d = st.to_dict()
    assert d["runs"]["a"] == [10, 11, 12] and d["gold"]["a"]["values"][1]["mean"] == pytest.approx(0.56)


def test_readme_states_the_statistics_paragraph_of_the_module():
    import os

    import grpo_guard.experiments.stats as S

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()

    def paragraph(text: str) -> str:
        start = text.index("**How the numbers are computed.**")
        end = min(i for i in (text.find("\n\n", start), text.find('"""', start)) if i > 0)
        return " ".join(text[start:end].replace("`", "").split())

    assert paragraph(readme) == paragraph(S.__doc__ + '"""')

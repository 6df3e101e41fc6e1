"""The statistics of an experiment: what arms × seeds (+ controls) say beyond one run's noise.

Torch-free (numpy and scipy): the app, the CLI report and ``benchmarks/overoptimization`` all
call these functions, so the page, the report and the study print the same numbers.

**How the numbers are computed.** Every figure is a mean over seeds with a 95 % t-interval:
for n seeds with values x₁…xₙ, mean x̄ ± t₀.₉₇₅,ₙ₋₁ · s/√n, where s is the sample standard
deviation (ddof 1) and t₀.₉₇₅,ₙ₋₁ the Student-t quantile (4.303 for 3 seeds); with one seed the
interval is undefined and shown as none. Proxy and gold bands use the eval steps every seed of
the arm has. *Gold at equal proxy* reads each seed's gold-against-proxy path (its eval points
in step order) by linear interpolation where the proxy first reaches a level; the levels are 5
evenly spaced values between the highest starting proxy and the lowest peak proxy of all runs
of the compared arms, so every run of every arm reaches each of them. *Gold lost beyond noise*
is an arm's gold minus that of its matched no-signal control (same config and seeds, proxy
``null_noise``), paired by seed, at equal eval step, and at equal proxy where the control's own
path (the arm's proxy scored on the control's images) reaches the level; negative means gold
lost to the proxy itself, i.e. over-optimisation rather than optimisation noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grpo_guard.experiments.alarm import AlarmVerdict, alarm_verdict
from grpo_guard.experiments.config import arm_of_control, control_arm

EQUAL_PROXY_LEVELS = 5
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RunCurves:
    """One run's eval curves: steps ascending, ``proxy`` / ``gold`` at each, ``parts`` every
    other eval score by name (``{reward: [value per step]}``: each proxy reward, weight 0
    included, and each gold evaluator), ``weights`` its proxy weights,
    ``per_step`` the mean over epochs of each per-denoising-step statistic (``{j: {stat: v}}``)."""

    run_id: int
    arm: str
    seed: int
    steps: list[int]
    proxy: list[float]
    gold: list[float]
    parts: dict[str, list[float]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    per_step: dict[int, dict[str, float]] = field(default_factory=dict)
    algorithm: str = ""
    ratio_norm: bool | None = None  # whether the run clips r̂ (RatioNorm); None: guess from the algorithm


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds and the half-width of its 95 % t-interval (nan with one seed)."""

    mean: float
    half: float
    n: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        if not math.isfinite(self.half):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _num(self.mean), "half": _num(self.half), "n": self.n}


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean ± t-quantile · s/√n of the finite ``values`` (one per seed)."""
    from scipy.stats import t

    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(x[0]), math.nan, 1)
    half = float(t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(float(x.mean()), half, n)


def common_steps(runs: Sequence[RunCurves]) -> list[int]:
    """The eval steps every run has."""
    if not runs:
        return []
    return sorted(set.intersection(*(set(r.steps) for r in runs)))


def band(runs: Sequence[RunCurves], key: str) -> tuple[list[int], list[Estimate]]:
    """``key`` ('proxy' or 'gold') at each common step: mean ± 95 % interval over the runs."""
    steps = common_steps(runs)
    return steps, [t_interval([getattr(r, key)[r.steps.index(s)] for r in runs]) for s in steps]


def gold_at_proxy(proxy: Sequence[float], gold: Sequence[float], level: float) -> float | None:
    """Gold where the path first reaches proxy ``level``, linearly interpolated between the two
    eval points around the crossing (the first point itself when it already reaches it; None
    when the path never does)."""
    if not proxy:
        return None
    if proxy[0] >= level:
        return float(gold[0])
    for i in range(1, len(proxy)):
        lo, hi = proxy[i - 1], proxy[i]
        if lo < level <= hi:
            w = (level - lo) / (hi - lo)
            return float(gold[i - 1] + w * (gold[i] - gold[i - 1]))
    return None


def equal_proxy_levels(runs: Sequence[RunCurves], n: int = EQUAL_PROXY_LEVELS) -> list[float]:
    """``n`` proxy levels every run reaches: evenly spaced above the highest starting proxy up
    to the lowest peak proxy (none when some run never rises above another's start)."""
    runs = [r for r in runs if r.proxy]
    if not runs:
        return []
    start = max(r.proxy[0] for r in runs)
    top = min(max(r.proxy) for r in runs)
    if not top > start:
        return []
    return [float(v) for v in np.linspace(start, top, n + 1)[1:]]


def control_proxy(control: RunCurves, weights: Mapping[str, float]) -> list[float] | None:
    """The arm's proxy (its ``weights``) scored on a control's eval images, per step; None when
    the control did not score one of the arm's proxy rewards."""
    if not weights or any(k not in control.parts for k in weights if weights[k]):
        return None
    return [sum(w * control.parts[k][i] for k, w in weights.items() if w) for i in range(len(control.steps))]


def gold_at_levels(runs: Sequence[RunCurves], levels: Sequence[float]) -> list[Estimate]:
    """Gold at each proxy level: mean ± 95 % interval over the runs whose path reaches it."""
    return [t_interval([g for r in runs if (g := gold_at_proxy(r.proxy, r.gold, lv)) is not None])
            for lv in levels]


def _paired(arm: Sequence[RunCurves], control: Sequence[RunCurves]) -> list[tuple[RunCurves, RunCurves]]:
    by_seed = {c.seed: c for c in control}
    return [(a, by_seed[a.seed]) for a in arm if a.seed in by_seed]


def beyond_noise_by_step(arm: Sequence[RunCurves], control: Sequence[RunCurves]) -> tuple[list[int], list[Estimate]]:
    """Arm gold − control gold, paired by seed, at each eval step both have for every pair."""
    pairs = _paired(arm, control)
    steps = common_steps([r for p in pairs for r in p])
    return steps, [t_interval([a.gold[a.steps.index(s)] - c.gold[c.steps.index(s)] for a, c in pairs])
                   for s in steps]


def beyond_noise_at_proxy(arm: Sequence[RunCurves], control: Sequence[RunCurves],
                          levels: Sequence[float]) -> list[Estimate]:
    """Arm gold − control gold at equal (arm) proxy, paired by seed; a pair counts at a level
    only when both paths reach it."""
    out = []
    for lv in levels:
        diffs = []
        for a, c in _paired(arm, control):
            cp = control_proxy(c, a.weights)
            ga = gold_at_proxy(a.proxy, a.gold, lv)
            gc = gold_at_proxy(cp, c.gold, lv) if cp is not None else None
            if ga is not None and gc is not None:
                diffs.append(ga - gc)
        out.append(t_interval(diffs))
    return out


def ratio_stats(runs: Sequence[RunCurves]) -> dict[int, dict[str, Estimate]]:
    """Per denoising step j: the ratio the arm clips (r̂ for Guard's RatioNorm, else r) as
    ``mean_minus_1`` and ``std``, and the clipped fractions by advantage sign, each a mean over
    epochs per run, then mean ± interval over seeds."""
    js = sorted({j for r in runs for j in r.per_step})
    out: dict[int, dict[str, Estimate]] = {}
    for j in js:
        cells: dict[str, list[float]] = {"mean_minus_1": [], "std": [], "pos_adv_clipped": [], "neg_adv_clipped": []}
        for r in runs:
            st = r.per_step.get(j, {})
            clips_hat = r.ratio_norm if r.ratio_norm is not None else "guard" in r.algorithm
            hat = "rhat_mean_minus_1" in st and clips_hat
            cells["mean_minus_1"].append(st.get("rhat_mean_minus_1" if hat else "r_mean_minus_1", math.nan))
            cells["std"].append(st.get("rhat_std" if hat else "r_std", math.nan))
            cells["pos_adv_clipped"].append(st.get("pos_adv_clipped", math.nan))
            cells["neg_adv_clipped"].append(st.get("neg_adv_clipped", math.nan))
        out[j] = {k: t_interval(v) for k, v in cells.items()}
    return out


def run_alarm(run: RunCurves, control: Sequence[RunCurves]) -> AlarmVerdict:
    """The alarm of one run: against the lower end of its control's gold band (the interval, or
    the mean with one control seed) when it has a control, else the trend rule."""
    lower = None
    if control:
        steps, est = band(control, "gold")
        lower = {s: e.lo if math.isfinite(e.half) else e.mean for s, e in zip(steps, est, strict=True)}
    return alarm_verdict(run.steps, run.proxy, run.gold, lower)


@dataclass(frozen=True)
class ExperimentStats:
    """Everything the experiment view and report show, computed once from the runs' curves."""

    arms: list[str]                                   # arm labels, controls included
    runs: dict[str, list[RunCurves]]
    proxy: dict[str, tuple[list[int], list[Estimate]]]
    gold: dict[str, tuple[list[int], list[Estimate]]]
    levels: list[float]                               # equal-proxy levels (non-control arms)
    gold_at_proxy: dict[str, list[Estimate]]
    beyond_step: dict[str, tuple[list[int], list[Estimate]]]  # arm -> arm − control by step
    beyond_proxy: dict[str, list[Estimate]]                   # arm -> arm − control at levels
    ratios: dict[str, dict[int, dict[str, Estimate]]]
    alarms: dict[str, list[AlarmVerdict]]

    def to_dict(self) -> dict[str, Any]:
        def series(d: Mapping[str, tuple[list[int], list[Estimate]]]) -> dict[str, Any]:
            return {a: {"steps": s, "values": [e.to_dict() for e in es]} for a, (s, es) in d.items()}

        return {
            "arms": self.arms, "runs": {a: [r.run_id for r in rs] for a, rs in self.runs.items()},
            "proxy": series(self.proxy), "gold": series(self.gold), "levels": self.levels,
            "gold_at_proxy": {a: [e.to_dict() for e in es] for a, es in self.gold_at_proxy.items()},
            "beyond_noise_by_step": series(self.beyond_step),
            "beyond_noise_at_proxy": {a: [e.to_dict() for e in es] for a, es in self.beyond_proxy.items()},
            "ratios": {a: {str(j): {k: e.to_dict() for k, e in st.items()} for j, st in rs.items()}
                       for a, rs in self.ratios.items()},
            "alarms": {a: [{"run_id": r.run_id, **vars(v)} for r, v in zip(self.runs[a], vs, strict=True)]
                       for a, vs in self.alarms.items()},
        }


def is_control(label: str) -> bool:
    """Whether an arm label is a no-signal control (``<arm>/control``)."""
    return arm_of_control(label) is not None


def experiment_stats(runs: Sequence[RunCurves]) -> ExperimentStats:
    """All of an experiment's statistics from its runs' curves (runs without eval points are
    left out). Equal-proxy levels are shared by every non-control arm; controls optimise another
    reward, so they enter only through "beyond noise" and the alarm."""
    by_arm: dict[str, list[RunCurves]] = {}
    for r in runs:
        if r.steps:
            by_arm.setdefault(r.arm, []).append(r)
    for rs in by_arm.values():
        rs.sort(key=lambda r: r.seed)
    arms = list(by_arm)
    mains = [a for a in arms if arm_of_control(a) is None]
    levels = equal_proxy_levels([r for a in mains for r in by_arm[a]])
    beyond_step, beyond_proxy, alarms = {}, {}, {}
    for a in arms:
        ctrl = by_arm.get(control_arm(a), []) if a in mains else []
        if ctrl:
            beyond_step[a] = beyond_noise_by_step(by_arm[a], ctrl)
            beyond_proxy[a] = beyond_noise_at_proxy(by_arm[a], ctrl, levels)
        if a in mains:
            alarms[a] = [run_alarm(r, ctrl) for r in by_arm[a]]
    return ExperimentStats(
        arms=arms, runs=by_arm,
        proxy={a: band(by_arm[a], "proxy") for a in arms}, gold={a: band(by_arm[a], "gold") for a in arms},
        levels=levels, gold_at_proxy={a: gold_at_levels(by_arm[a], levels) for a in mains},
        beyond_step=beyond_step, beyond_proxy=beyond_proxy,
        ratios={a: ratio_stats(by_arm[a]) for a in arms}, alarms=alarms,
    )

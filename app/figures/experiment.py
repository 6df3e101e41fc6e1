"""Experiment page figures, pure functions of :class:`grpo_guard.experiments.stats.ExperimentStats`:
proxy and gold per arm as mean ± 95 % bands over seeds, gold against proxy per arm (each seed's
path, and the mean ± interval at the equal-proxy levels), gold lost beyond noise (arm − its
control) and the per-denoising-step ratio statistics of every arm side by side.

Each arm's mean trace is named after the arm (its band traces are ``"<arm> 95% CI"``), so a test
can read the plotted numbers back from the page by trace name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.figures.base import PALETTE, Fig, _axis_names, _grid, _layout, empty_figure
from grpo_guard.experiments.stats import Estimate, ExperimentStats, is_control

CONTROL_COLOR = "#6b7280"


def arm_colors(stats: ExperimentStats) -> dict[str, str]:
    """One colour per arm, shared by its control (drawn dashed), stable across the page's charts."""
    mains = [a for a in stats.arms if not is_control(a)]
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(mains)}
    for a in stats.arms:
        if is_control(a):
            colors[a] = colors.get(a.rsplit("/", 1)[0], CONTROL_COLOR)
    return colors


def _bounds(est: Sequence[Estimate]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.array([e.mean for e in est], dtype=float)
    half = np.array([e.half if math.isfinite(e.half) else 0.0 for e in est], dtype=float)
    return mean, mean - half, mean + half


def _band(x: Sequence[float], est: Sequence[Estimate], name: str, color: str, *, dash: bool = False,
          xaxis: str = "x", yaxis: str = "y", showlegend: bool = True) -> list[dict[str, Any]]:
    """The mean line and its 95 % band (upper edge, then lower edge filled to it)."""
    mean, lo, hi = _bounds(est)
    xs = np.asarray(x, dtype=float)
    common = dict(type="scatter", x=xs, xaxis=xaxis, yaxis=yaxis, legendgroup=name, hoverinfo="skip")
    return [
        {**common, "y": hi, "mode": "lines", "line": dict(width=0, color=color), "name": f"{name} 95% CI",
         "showlegend": False},
        {**common, "y": lo, "mode": "lines", "line": dict(width=0, color=color), "fill": "tonexty",
         "fillcolor": _alpha(color, 0.10 if dash else 0.20), "name": f"{name} 95% CI", "showlegend": False},
        dict(type="scatter", mode="lines+markers", x=xs, y=mean, name=name, legendgroup=name, xaxis=xaxis, yaxis=yaxis,
             showlegend=showlegend, marker=dict(size=5), line=dict(color=color, width=2, dash="dash" if dash else "solid"),
             customdata=np.stack([lo, hi], axis=1) if len(xs) else None,
             hovertemplate=f"{name}: %{{y:.4f}} [%{{customdata[0]:.4f}}, %{{customdata[1]:.4f}}]<extra></extra>"),
    ]


def _alpha(hex_color: str, a: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{a})"


def bands_figure(stats: ExperimentStats, key: str, *, uirevision: str | None = None, height: int = 360) -> Fig:
    """``key`` ('proxy' or 'gold') by eval step per arm: mean ± 95 % band over seeds. Controls
    are drawn dashed on the gold chart; their proxy is another reward, so not on the proxy chart."""
    title = f"Eval {key} per arm (mean ± 95 % interval over seeds)"
    colors = arm_colors(stats)
    data: list[dict[str, Any]] = []
    for a in stats.arms:
        if key == "proxy" and is_control(a):
            continue
        steps, est = getattr(stats, key)[a]
        if steps:
            data += _band(steps, est, a, colors[a], dash=is_control(a))
    if not data:
        return empty_figure(title, "no evaluated run yet", uirevision=uirevision, height=height)
    lay = _layout(title, uirevision or f"exp-{key}", height=height, hovermode="closest")
    lay["xaxis"] = dict(title=dict(text="step"))
    lay["yaxis"] = dict(title=dict(text=f"eval {key}"))
    return Fig(data, lay)


def gold_vs_proxy_figure(stats: ExperimentStats, *, uirevision: str | None = None, height: int = 380) -> Fig:
    """Gold against proxy per arm: every seed's path (faint) and, at the equal-proxy levels, the
    mean gold ± 95 % interval (markers with error bars, named after the arm)."""
    title = "Gold against proxy per arm; markers: gold at equal proxy (mean ± 95 % interval)"
    colors = arm_colors(stats)
    data: list[dict[str, Any]] = []
    for a in stats.gold_at_proxy:
        for r in stats.runs[a]:
            data.append(dict(type="scatter", mode="lines", x=np.asarray(r.proxy, float), y=np.asarray(r.gold, float),
                             name=f"{a} seed {r.seed}", legendgroup=a, showlegend=False, opacity=0.35,
                             line=dict(color=colors[a], width=1)))
        if stats.levels:
            mean, lo, hi = _bounds(stats.gold_at_proxy[a])
            data.append(dict(type="scatter", mode="lines+markers", x=np.asarray(stats.levels, float), y=mean, name=a,
                             legendgroup=a, marker=dict(size=8, color=colors[a]), line=dict(color=colors[a], width=2),
                             error_y=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo,
                                          color=colors[a], thickness=1.5)))
    if not data:
        return empty_figure(title, "no evaluated run yet", uirevision=uirevision, height=height)
    lay = _layout(title, uirevision or "exp-gold-proxy", height=height, hovermode="closest")
    lay["xaxis"] = dict(title=dict(text="eval proxy"))
    lay["yaxis"] = dict(title=dict(text="eval gold"))
    return Fig(data, lay)


def beyond_noise_figure(stats: ExperimentStats, *, uirevision: str | None = None, height: int = 340) -> Fig:
    """Gold lost beyond noise: arm − its no-signal control, paired by seed, by step (mean ± 95 %
    band; below 0 = gold lost to the proxy itself)."""
    title = "Gold lost beyond noise: arm − its no-signal control (mean ± 95 % interval)"
    colors = arm_colors(stats)
    data: list[dict[str, Any]] = []
    for a, (steps, est) in stats.beyond_step.items():
        if steps:
            data += _band(steps, est, a, colors[a])
    if not data:
        return empty_figure(title, "no controls in this experiment (controls: true adds them)", uirevision=uirevision,
                            height=height)
    lay = _layout(title, uirevision or "exp-beyond", height=height, hovermode="closest")
    lay["xaxis"] = dict(title=dict(text="step"))
    lay["yaxis"] = dict(title=dict(text="gold − control gold"), zeroline=True, zerolinecolor="#9ca3af", zerolinewidth=1)
    return Fig(data, lay)


RATIO_PANELS = (("mean_minus_1", "clipped ratio − 1 (r̂ for RatioNorm, else r)"), ("std", "its std"),
                ("pos_adv_clipped", "clipped, A > 0"), ("neg_adv_clipped", "clipped, A < 0"))


def ratio_figure(stats: ExperimentStats, *, uirevision: str | None = None, height: int = 520) -> Fig:
    """Per-denoising-step ratio statistics of every arm side by side: one panel per statistic,
    one line per arm (mean over epochs, then ± 95 % interval over seeds as error bars)."""
    title = "Per-denoising-step ratio statistics per arm"
    colors = arm_colors(stats)
    data: list[dict[str, Any]] = []
    for p, (stat, _) in enumerate(RATIO_PANELS):
        xa, ya = _axis_names(p)
        for a in stats.arms:
            per_j = stats.ratios.get(a, {})
            js = [j for j in sorted(per_j) if stat in per_j[j] and per_j[j][stat].n]
            if not js:
                continue
            mean, lo, hi = _bounds([per_j[j][stat] for j in js])
            data.append(dict(type="scatter", mode="lines+markers", x=np.asarray(js, float), y=mean, name=a, legendgroup=a,
                             showlegend=p == 0, xaxis=xa, yaxis=ya, marker=dict(size=5),
                             line=dict(color=colors[a], width=2, dash="dash" if is_control(a) else "solid"),
                             error_y=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo,
                                          color=colors[a], thickness=1)))
    if not data:
        return empty_figure(title, "no per-step statistics yet", uirevision=uirevision, height=height)
    lay = _layout(title, uirevision or "exp-ratio", height=height, hovermode="closest")
    lay.update(_grid(len(RATIO_PANELS), 2, [t for _, t in RATIO_PANELS]))
    for p in range(len(RATIO_PANELS)):  # denoising steps are whole numbers
        lay["xaxis" if p == 0 else f"xaxis{p + 1}"].update(dtick=1, title=dict(text="denoising step j"))
    return Fig(data, lay)

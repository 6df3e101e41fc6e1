"""Compare page figures: one metric of several runs overlaid, gold at equal proxy, and the
config diff table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.figures.base import (
    ALARM_COLOR,
    GOLD_KEY,
    PALETTE,
    PROXY_KEY,
    Fig,
    SeriesMap,
    _has_data,
    _layout,
    _line,
    _normalized,
    _series,
    empty_figure,
)


# ---- Compare -------------------------------------------------------------------------------
def overlay_figure(runs: Mapping[str, SeriesMap], key: str, *, title: str | None = None, normalize: bool = False,
                   onsets: Mapping[str, int | None] | None = None, uirevision: str | None = None,
                   height: int = 340) -> Fig:
    """Curve ``key`` of several runs on one chart (``runs``: label -> series map, colours by
    order, so an A/B pair keeps its colours across charts); each run's over-optimization onset
    is marked with an ×."""
    title = title or key
    data = []
    for i, (label, series) in enumerate(runs.items()):
        s, v = _series(series, key)
        if not _has_data(v):
            continue
        if normalize:
            v, _ = _normalized(v)
        color = PALETTE[i % len(PALETTE)]
        data.append(_line(s, v, label, color, legendgroup=label))
        onset = (onsets or {}).get(label)
        at = np.where(s == onset)[0] if onset is not None else np.zeros(0, dtype=int)
        if at.size and math.isfinite(v[at[0]]):
            data.append(dict(type="scatter", mode="markers", x=[onset], y=[float(v[at[0]])], legendgroup=label,
                             name=f"{label}: over-optimization", showlegend=False,
                             marker=dict(color=ALARM_COLOR, size=12, symbol="x", line=dict(color=color, width=1))))
    if not data:
        return empty_figure(title, f"no '{key}' data for the selected runs", uirevision=uirevision, height=height)
    lay = _layout(title, uirevision, height=height)
    lay["xaxis"] = dict(title=dict(text="step"))
    lay["yaxis"] = dict(title=dict(text=key + (" (÷ step-0)" if normalize else "")))
    return Fig(data, lay)


def gold_vs_proxy_figure(runs: Mapping[str, SeriesMap], *, title: str = "Gold at equal proxy",
                         uirevision: str | None = None, height: int = 340) -> Fig:
    """Each run's eval points as a path in (proxy, gold): comparing gold *at equal proxy* is
    the fair A/B test (TOYWORLD.md), since a faster optimizer reaches any proxy sooner."""
    data = []
    for i, (label, series) in enumerate(runs.items()):
        ps, pv = _series(series, PROXY_KEY)
        gs, gv = _series(series, GOLD_KEY)
        gold_at = {int(s): float(v) for s, v in zip(gs, gv, strict=True)}
        pts = [(float(p), gold_at[int(s)], int(s)) for s, p in zip(ps, pv, strict=True)
               if int(s) in gold_at and math.isfinite(p) and math.isfinite(gold_at[int(s)])]
        if not pts:
            continue
        x, y, st = (np.asarray(t) for t in zip(*pts, strict=True))
        data.append(dict(type="scatter", mode="lines+markers", x=x, y=y, name=label, customdata=st,
                         line=dict(color=PALETTE[i % len(PALETTE)], width=2), marker=dict(size=6),
                         hovertemplate="step %{customdata}<br>proxy %{x:.4g}<br>gold %{y:.4g}<extra>" + label + "</extra>"))
    if not data:
        return empty_figure(title, "no eval points with both proxy and gold yet", uirevision=uirevision, height=height)
    lay = _layout(title, uirevision, height=height, hovermode="closest")
    lay["xaxis"] = dict(title=dict(text="proxy reward"))
    lay["yaxis"] = dict(title=dict(text="gold"))
    return Fig(data, lay)


def config_diff(configs: Mapping[str, Mapping[str, Any]], *, only_differences: bool = True) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a config comparison (field, then one column per run). With
    ``only_differences`` a row is kept only when the runs disagree on that field."""
    labels = list(configs)
    fields: list[str] = []
    for cfg in configs.values():
        for k in cfg:
            if k not in fields:
                fields.append(k)
    rows = []
    for f in fields:
        vals = [_fmt_value(configs[label].get(f, "—")) for label in labels]
        if only_differences and len(labels) > 1 and len(set(vals)) == 1:
            continue
        rows.append([f, *vals])
    return ["field", *labels], rows


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    return str(v)

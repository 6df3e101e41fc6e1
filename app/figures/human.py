"""The "human" series: win rate of each run's (or arm's) checkpoints against what they were
judged against (ties half), with Wilson 95 % error bars and the number of judgments, a pure
function of ``grpo_guard.judging.sessions.human_series`` output. Each trace is named after its
run or arm, so a test can read the plotted numbers back by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.figures.base import PALETTE, Fig, _layout, empty_figure
from grpo_guard.judging.stats import WinRate

TITLE = "Human gold (win rate)"  # short: the legend shares its line on a third-width plot


def human_figure(series: Mapping[str, Sequence[tuple[int, WinRate]]], *, uirevision: str | None = None,
                 title: str = TITLE) -> Fig:
    """One trace per label: x = eval step, y = win rate, asymmetric error bars to the Wilson
    bounds, the judgment count as text and in the hover; 0.5 (a coin flip) as a dotted line."""
    traces = []
    for i, (label, points) in enumerate(series.items()):
        pts = [(st, r) for st, r in points if r.rate is not None]
        if not pts:
            continue
        x = np.array([st for st, _ in pts], dtype=float)
        y = np.array([r.rate for _, r in pts], dtype=float)
        lo = np.array([r.lo for _, r in pts], dtype=float)
        hi = np.array([r.hi for _, r in pts], dtype=float)
        n = np.array([r.n for _, r in pts], dtype=float)
        traces.append(dict(
            type="scatter", mode="lines+markers+text", x=x, y=y, name=str(label),
            line=dict(color=PALETTE[i % len(PALETTE)], width=2), marker=dict(size=7),
            error_y=dict(type="data", symmetric=False, array=hi - y, arrayminus=y - lo, visible=True, thickness=1.2),
            text=[f"n={int(k)}" for k in n], textposition="top center", textfont=dict(size=10),
            customdata=np.stack([lo, hi, n], axis=1),
            hovertemplate=(f"{label}: %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}], "
                           "n=%{customdata[2]:.0f}<extra></extra>")))
    if not traces:
        return empty_figure(title, "no human judgments yet: press Judge", uirevision=uirevision)
    lay = _layout(title, uirevision)
    lay["xaxis"] = dict(title=dict(text="eval step"))
    lay["yaxis"] = dict(title=dict(text="win rate, ties ½ (Wilson 95 %)"), range=[-0.02, 1.02])
    lay["shapes"] = [dict(type="line", xref="paper", x0=0, x1=1, y0=0.5, y1=0.5,
                          line=dict(color="#9ca3af", dash="dot", width=1))]
    lay["hovermode"] = "closest"
    return Fig(traces, lay)

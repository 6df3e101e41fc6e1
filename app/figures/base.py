"""The figure type and the helpers every figure uses: :class:`Fig` (a Plotly figure as plain
dicts, serialised with numpy arrays as base64 typed arrays), layout and grid helpers, series
access that tolerates missing keys, and the colours.

Speed: building figures through Plotly's object model (``go.Figure``, ``make_subplots``)
validates every property and costs 10-50 ms a figure (measured), most of a 1 Hz refresh
budget. ``Fig.to_plotly()`` gives the validated ``go.Figure`` (the tests use it, so every
figure is still checked against Plotly's schema).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from grpo_guard import metrics as M

Series = tuple[Sequence[int], Sequence[float | None]]
SeriesMap = Mapping[str, Series]

PROXY_KEY = M.EVAL_PROXY
GOLD_KEY = M.EVAL_GOLD
PROXY_COLOR = "#2563eb"
GOLD_COLOR = "#d97706"
ALARM_COLOR = "#dc2626"
PALETTE = ("#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#9333ea")
GUARD_SPREAD_TARGET = 2.5  # ALGORITHM.md §8: grad_norm_v max/min is <= 2.5x for Guard, 20-26x baseline
_BASE_LAYOUT: dict[str, Any] = dict(
    margin=dict(l=60, r=30, t=50, b=45),
    height=330,
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
    hovermode="x unified",
    font=dict(size=12),
)


# ---- the figure type -----------------------------------------------------------------------
def _typed_array(a: np.ndarray) -> Any:
    """numpy -> Plotly's typed-array JSON ({dtype, bdata[, shape]}); int64 is narrowed (JS
    typed arrays have no int64) and anything else becomes a list."""
    if a.dtype.kind == "f":
        a = a.astype("<f4" if a.dtype == np.float32 else "<f8", copy=False)
        code = "f4" if a.dtype == np.float32 else "f8"
    elif a.dtype.kind in "iu" and a.size:
        lo, hi = int(a.min()), int(a.max())
        code = next((c for c in ("i1", "u1", "i2", "u2", "i4", "u4")
                     if np.iinfo(c).min <= lo and hi <= np.iinfo(c).max), "f8")
        a = a.astype("<" + code, copy=False)
    else:
        return a.tolist()
    out: dict[str, Any] = {"dtype": code, "bdata": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")}
    if a.ndim > 1:
        out["shape"] = ", ".join(str(n) for n in a.shape)
    return out


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return _typed_array(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, range):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _template() -> dict[str, Any]:
    """Plotly's ``plotly_white`` template as a dict (read once; plotly.js has no templates)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import plotly.io as pio

        _TEMPLATE = pio.templates["plotly_white"].to_plotly_json()
    return _TEMPLATE


_TEMPLATE: dict[str, Any] | None = None


def _decode(o: Any) -> Any:
    """Typed-array JSON back to numpy (the inverse of :func:`_typed_array`)."""
    if isinstance(o, dict):
        if set(o) in ({"dtype", "bdata"}, {"dtype", "bdata", "shape"}):
            a = np.frombuffer(base64.b64decode(o["bdata"]), dtype=np.dtype(o["dtype"]).newbyteorder("<"))
            if "shape" in o:
                a = a.reshape([int(n) for n in o["shape"].split(",")])
            return a
        return {k: _decode(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_decode(v) for v in o]
    return o


class Fig:
    """A Plotly figure as plain dicts: ``data`` (list of trace dicts) and ``layout`` (dict).

    Anything with ``to_json()`` is drawn by ``gr.Plot`` as a Plotly figure. ``to_plotly()``
    builds the validated ``plotly.graph_objects.Figure`` (slow; for tests and notebooks)."""

    def __init__(self, data: list[dict[str, Any]] | None = None, layout: dict[str, Any] | None = None) -> None:
        self.data = list(data or [])
        self.layout = dict(layout or {})

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "layout": {"template": _template(), **self.layout}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_jsonable, separators=(",", ":"), allow_nan=True)

    def to_plotly(self):
        import plotly.graph_objects as go

        return go.Figure(_decode(json.loads(self.to_json())))

    def __repr__(self) -> str:
        title = (self.layout.get("title") or {}).get("text", "")
        return f"Fig({title!r}, {len(self.data)} traces)"


# ---- small helpers -------------------------------------------------------------------------
def _arr(values: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    """Floats with None -> NaN."""
    if values is None:
        return np.zeros(0)
    if isinstance(values, np.ndarray):
        return values.astype(float, copy=False)
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _series(series: SeriesMap | None, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` with NaN-only points kept (gaps), or two empty arrays."""
    if not series or key not in series or series[key] is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps, values = series[key]
    s = np.asarray(list(steps), dtype=np.int64)
    v = _arr(values)
    n = min(len(s), len(v))
    return s[:n], v[:n]


def _has_data(v: np.ndarray) -> bool:
    return v.size > 0 and bool(np.isfinite(v).any())


def _layout(title: str, uirevision: str | None, **kw: Any) -> dict[str, Any]:
    lay = dict(_BASE_LAYOUT)
    lay["title"] = dict(text=title, x=0.01, xanchor="left", font=dict(size=14))
    lay["uirevision"] = uirevision or title
    lay.update(kw)
    return lay


def empty_figure(title: str, message: str = "no data yet", *, uirevision: str | None = None,
                 height: int = 330) -> Fig:
    """A blank figure with ``message`` in the middle (used for any missing data)."""
    lay = _layout(title, uirevision, height=height)
    lay["xaxis"] = dict(visible=False)
    lay["yaxis"] = dict(visible=False)
    lay["annotations"] = [dict(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                               font=dict(size=15, color="#6b7280"))]
    return Fig([], lay)


def is_empty(fig: Fig) -> bool:
    """True for a figure made by :func:`empty_figure` (for tests and the UI)."""
    return len(fig.data) == 0


def _line(x: np.ndarray, y: np.ndarray, name: str, color: str, **kw: Any) -> dict[str, Any]:
    d = dict(type="scatter", mode="lines", x=x, y=y, name=name, line=dict(color=color, width=2))
    if x.size <= 60:
        d["mode"] = "lines+markers"
        d["marker"] = dict(size=5)
    d.update(kw)
    return d


def _normalized(v: np.ndarray) -> tuple[np.ndarray, str]:
    """Divide by the first finite value when it is > 0 (base model = 1.00, ALGORITHM.md §10),
    else subtract it. Returns the values and a suffix for the axis title."""
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return v, ""
    base = float(finite[0])
    if base > 0:
        return v / base, " (÷ step-0)"
    return v - base, " (− step-0)"


def _grid(n: int, cols: int, titles: Sequence[str], *, hgap: float = 0.09, vgap: float = 0.16,
          shared_x: bool = False) -> dict[str, Any]:
    """Layout entries placing ``n`` panels on a grid, as ``make_subplots`` would (but ~20x
    cheaper). Panel i uses axes ``x{i+1}``/``y{i+1}``; titles go in annotations."""
    rows = max(1, math.ceil(n / cols))
    w = (1.0 - hgap * (cols - 1)) / cols
    h = (1.0 - vgap * (rows - 1)) / rows
    lay: dict[str, Any] = {"annotations": []}
    for i in range(n):
        r, c = divmod(i, cols)
        x0 = c * (w + hgap)
        y1 = 1.0 - r * (h + vgap)
        sx = "" if i == 0 else str(i + 1)
        lay[f"xaxis{sx}"] = dict(domain=[x0, x0 + w], anchor=f"y{sx}")
        lay[f"yaxis{sx}"] = dict(domain=[y1 - h, y1], anchor=f"x{sx}")
        if shared_x and i:
            lay[f"xaxis{sx}"]["matches"] = "x"
        if i < len(titles):
            lay["annotations"].append(dict(text=f"<b>{titles[i]}</b>", x=x0 + w / 2, y=y1, xref="paper", yref="paper",
                                           xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=12)))
    return lay


def step_axis(x_max: float | None, *steps: np.ndarray) -> dict[str, Any]:
    """An x-axis of optimizer steps from 0 to the run's planned last step (``x_max``) or its
    last stored one, with whole-step ticks: a lone first eval point sits at the left of the
    run's span, not in the middle of an axis from 0 to 1."""
    seen = [float(a.max()) for a in steps if a.size]
    hi = max([*seen, float(x_max or 0), 1.0])
    ax: dict[str, Any] = dict(title=dict(text="step"), range=[-0.02 * hi, 1.02 * hi], tickformat="d")
    if hi <= 10:
        ax["dtick"] = 1
    return ax


def share_axis(top: float) -> dict[str, Any]:
    """A y-axis of shares (0-1) from 0 to a little above ``top``, with as many percent decimals
    as its ticks need (a fixed ".0%" printed "0% 0% 0%" for shares under 1 %)."""
    hi = max(top * 1.15, 1e-3)
    decimals = max(0, min(4, -math.floor(math.log10(hi / 5)) - 2))
    return dict(title=dict(text="share of samples"), range=[0, hi], tickformat=f".{decimals}%", rangemode="tozero")


def log_axis(values: np.ndarray) -> dict[str, Any]:
    """A log axis with a tick at each power of ten only, spanning at least one decade (a
    default log axis labels every digit: "4 3 2 0.001 9 8 7 ...")."""
    pos = values[np.isfinite(values) & (values > 0)] if values.size else values
    if pos.size == 0:
        return dict(type="log", dtick=1, exponentformat="power")
    lo, hi = math.floor(math.log10(float(pos.min()))), math.ceil(math.log10(float(pos.max())))
    if hi <= lo:
        hi = lo + 1
    return dict(type="log", dtick=1, range=[lo - 0.05, hi + 0.05], exponentformat="power", minor=dict(showgrid=False))


def whole_steps(*steps: np.ndarray) -> dict[str, Any]:
    """Axis settings for optimizer steps: a tick per step while there are few (Plotly's own
    ticks would put "1.5, 2.5" between them), Plotly's choice otherwise."""
    seen = [a for a in steps if a.size]
    if not seen:
        return {}
    lo, hi = min(int(a.min()) for a in seen), max(int(a.max()) for a in seen)
    return {"dtick": 1} if hi - lo <= 12 else {}


def _axis_names(i: int) -> tuple[str, str]:
    return ("x", "y") if i == 0 else (f"x{i + 1}", f"y{i + 1}")

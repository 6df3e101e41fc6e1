"""Run page figures: proxy vs gold with the over-optimization marker (the paper's Figure 1),
rewards and advantages, per-denoising-step heatmaps, clip fractions by advantage sign,
per-step gradient norms, and small panels of training scalars."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.figures.base import (
    ALARM_COLOR,
    GOLD_COLOR,
    GOLD_KEY,
    GUARD_SPREAD_TARGET,
    PALETTE,
    PROXY_COLOR,
    PROXY_KEY,
    Fig,
    SeriesMap,
    _arr,
    _axis_names,
    _grid,
    _has_data,
    _layout,
    _line,
    _normalized,
    _series,
    empty_figure,
    log_axis,
    share_axis,
    step_axis,
    whole_steps,
)
from grpo_guard import metrics as M


# ---- over-optimization ---------------------------------------------------------------------
def _hacking_onset_fn():
    try:
        from grpo_guard.experiments.alarm import hacking_onset
    except ImportError:  # the alarm module is optional for the UI: no marker without it
        return None
    return hacking_onset


def over_optimization_onset(series: SeriesMap | None, *, proxy_key: str = PROXY_KEY, gold_key: str = GOLD_KEY,
                            window: int = 5, tau: float = 0.02) -> int | None:
    """The first eval step where gold falls while the proxy still rises (ALGORITHM.md §10), from
    ``grpo_guard.experiments.alarm.hacking_onset`` on the steps both series share; None if it never fired
    (or the alarm is unavailable)."""
    ps, pv = _series(series, proxy_key)
    gs, gv = _series(series, gold_key)
    if ps.size == 0 or gs.size == 0:
        return None
    gold_at = {int(s): float(v) for s, v in zip(gs, gv, strict=True) if math.isfinite(v)}
    pts = [(int(s), float(v), gold_at[int(s)]) for s, v in zip(ps, pv, strict=True) if math.isfinite(v) and int(s) in gold_at]
    if len(pts) < 2:
        return None
    fn = _hacking_onset_fn()
    if fn is None:
        return None
    steps, proxy, gold = (list(t) for t in zip(*pts, strict=True))
    onset = fn(steps, proxy, gold, window=window, tau=tau)
    return None if onset is None else int(onset)


ALARM_KEY = M.ALARM_ONSET  # logged by the trainer once, on its full (not downsampled) history


def onset_of_run(series: SeriesMap | None) -> int | None:
    """The trainer's own alarm (``alarm/hacking_onset``) when it logged one, else the onset
    recomputed from the eval series by :func:`over_optimization_onset`."""
    _, v = _series(series, ALARM_KEY)
    finite = v[np.isfinite(v)]
    if finite.size:
        return int(finite[0])
    return over_optimization_onset(series)


def gold_keys(keys: Sequence[str], gold_names: Sequence[str] | None = None, *, proxy_key: str = PROXY_KEY,
              gold_key: str = GOLD_KEY) -> list[str]:
    """The individual gold evaluator keys (``eval/<name>``) among ``keys``. With ``gold_names``
    (the run config's ``gold``) exactly those; otherwise every ``eval/<name>`` except the proxy
    total, the gold mean and its relative form (proxy components then count as gold too). Then,
    either way, the evaluators' breakdowns ``eval/<name>/<key>`` (GenEval's ``eval/geneval/overall``
    first, then its image mean and per-family accuracies), which are held-out accuracies whether or not ``name`` is a proxy."""
    if gold_names is not None:
        out = [M.EVAL_REWARD.format(name=g) for g in gold_names if M.EVAL_REWARD.format(name=g) in keys]
    else:
        out = sorted(k for k in keys if (rest := M.name_in(M.EVAL_REWARD, k)) is not None
                     and k not in (proxy_key, gold_key) and not _is_total(rest))
    details = sorted(k for k in keys if (rest := M.name_in(M.EVAL_DETAIL, k)) is not None and not _is_total(rest))
    # GenEval's Overall (the paper's figure) leads its breakdown
    return out + sorted(details, key=lambda k: k != M.GENEVAL_OVERALL)


def _is_total(name: str) -> bool:
    return name.startswith("proxy") or name.startswith("gold")


def proxy_gold_figure(series: SeriesMap | None, *, onset: int | None = None, normalize: bool = True,
                      extra_gold: Sequence[str] = (), title: str = "Proxy reward vs gold (held-out eval)",
                      uirevision: str | None = None, height: int = 380, x_max: int | None = None) -> Fig:
    """The paper's Figure 1: proxy reward and gold metric against step, on the fixed eval set.

    ``normalize`` (the default): both on one axis, each divided by its step-0 value (base
    model = 1.00, as the paper plots it), raw values in the hover, so a 0.3 % change looks
    like one. Without it, raw values on two axes (proxy left, gold right).
    ``onset`` (see :func:`over_optimization_onset`) draws a red marker: a dashed line at that
    step, an "over-optimization" label and a shaded region after it. ``extra_gold`` adds
    individual gold evaluators as dotted lines (hidden until clicked in the legend, so the
    gold mean keeps its scale). ``x_max``: the run's planned last step (the x-axis spans it)."""
    ps, pv = _series(series, PROXY_KEY)
    gs, gv = _series(series, GOLD_KEY)
    if not _has_data(pv) and not _has_data(gv):
        return empty_figure(title, "no eval yet: proxy and gold appear after the first evaluation",
                            uirevision=uirevision, height=height)
    gold_axis = "y" if normalize else "y2"

    def curve(x: np.ndarray, raw: np.ndarray, name: str, color: str) -> dict[str, Any]:
        if not normalize:
            return _line(x, raw, name, color, yaxis=gold_axis if color != PROXY_COLOR else "y",
                         hovertemplate=f"{name} %{{y:.4g}}<extra></extra>")
        rel, sfx = _normalized(raw)
        how = "× step 0" if "÷" in sfx else "− step 0"
        return _line(x, rel, name, color, customdata=raw,
                     hovertemplate=f"{name} %{{y:.3f}} {how} (raw %{{customdata:.4g}})<extra></extra>")

    data: list[dict[str, Any]] = []
    if _has_data(pv):
        data.append(curve(ps, pv, "proxy reward", PROXY_COLOR))
    if _has_data(gv):
        data.append(curve(gs, gv, "gold", GOLD_COLOR))
    for i, k in enumerate(extra_gold):
        s, v = _series(series, k)
        if not _has_data(v):
            continue
        d = curve(s, v, k.removeprefix("eval/"), PALETTE[(i + 2) % len(PALETTE)])
        d["line"]["dash"] = "dot"
        d["line"]["width"] = 1.3
        d["opacity"] = 0.8
        d["visible"] = "legendonly"  # one click away; shown, they would stretch the axis flat
        data.append(d)
    lay = _layout(title, uirevision, height=height)
    lay["xaxis"] = step_axis(x_max, ps, gs)
    if normalize:
        _, psfx = _normalized(pv)
        _, gsfx = _normalized(gv)
        label = "relative to the base model (step 0 = 1.00)" if "÷" in psfx + gsfx else "change since step 0"
        lay["yaxis"] = dict(title=dict(text=label), tickformat=".3~f")
        lay["margin"] = dict(l=60, r=30, t=60, b=45)
    else:
        lay["yaxis"] = dict(title=dict(text="proxy", font=dict(color=PROXY_COLOR)), tickfont=dict(color=PROXY_COLOR))
        lay["yaxis2"] = dict(title=dict(text="gold", font=dict(color=GOLD_COLOR)), tickfont=dict(color=GOLD_COLOR),
                             overlaying="y", side="right", showgrid=False)
        lay["margin"] = dict(l=60, r=65, t=60, b=45)
    if onset is not None:
        xmax = float(max(ps.max() if ps.size else onset, gs.max() if gs.size else onset, onset))
        lay["shapes"] = [
            dict(type="rect", xref="x", yref="paper", x0=onset, x1=xmax, y0=0, y1=1, fillcolor=ALARM_COLOR,
                 opacity=0.06, line=dict(width=0), layer="below"),
            dict(type="line", xref="x", yref="paper", x0=onset, x1=onset, y0=0, y1=1,
                 line=dict(color=ALARM_COLOR, width=2, dash="dash")),
        ]
        lay["annotations"] = [dict(text=f"⚠ over-optimization (step {onset})", x=onset, y=1.0, xref="x", yref="paper",
                                   xanchor="left", yanchor="top", showarrow=False,
                                   font=dict(color=ALARM_COLOR, size=12), bgcolor="rgba(255,255,255,0.8)")]
        gold_y = next((np.asarray(d["y"]) for d in data if d["name"] == "gold"), np.zeros(0))
        at = np.where(gs == onset)[0]
        if at.size and at[0] < gold_y.size and math.isfinite(gold_y[at[0]]):
            data.append(dict(type="scatter", mode="markers", x=[onset], y=[float(gold_y[at[0]])], yaxis=gold_axis,
                             name="over-optimization onset", marker=dict(color=ALARM_COLOR, size=11, symbol="x"),
                             showlegend=False, hoverinfo="skip"))
    return Fig(data, lay)


# ---- rewards and advantages ----------------------------------------------------------------
REWARD_MEAN_KEYS = (M.REWARD_TOTAL_MEAN, M.REWARD_MEAN_SHORT)  # the trainer's name first, then the short form
def reward_figure(series: SeriesMap | None, *, title: str = "Rewards and advantages",
                  uirevision: str | None = None) -> Fig:
    """Left: proxy reward mean with a ±std band (plus each named reward's mean). Right: share of
    zero-variance groups and mean |advantage|."""
    mean_key = next((k for k in REWARD_MEAN_KEYS if _has_data(_series(series, k)[1])), REWARD_MEAN_KEYS[0])
    s, mean = _series(series, mean_key)
    _, std = _series(series, mean_key.replace("/mean", "/std"))
    zs, zero = _series(series, M.ZERO_STD_RATIO)
    aas, adv = _series(series, M.ADV_ABS_MEAN)
    named = sorted(k for k in (series or {}) if M.name_in(M.REWARD_MEAN, k) is not None
                   and k not in (*REWARD_MEAN_KEYS, M.REWARD_GROUP_STD))
    if not (_has_data(mean) or _has_data(zero) or _has_data(adv) or named):
        return empty_figure(title, uirevision=uirevision)
    lay = _layout(title, uirevision, height=360, **_grid(2, 2, ["reward mean ± std", "zero-variance groups, mean |A|"]))
    lay["margin"] = dict(l=55, r=20, t=60, b=95)
    lay["legend"] = dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0, font=dict(size=11))
    data: list[dict[str, Any]] = []
    if _has_data(mean):
        if std.size == mean.size and _has_data(std):
            band_x = np.concatenate([s, s[::-1]])
            band_y = np.concatenate([mean + std, (mean - std)[::-1]])
            data.append(dict(type="scatter", x=band_x, y=band_y, fill="toself", fillcolor="rgba(37,99,235,0.15)",
                             line=dict(width=0), name="± std", hoverinfo="skip", showlegend=True))
        data.append(_line(s, mean, "total reward (mean)", PROXY_COLOR))
    for i, k in enumerate(named):
        ks, kv = _series(series, k)
        if _has_data(kv):
            d = _line(ks, kv, k, PALETTE[(i + 2) % len(PALETTE)])
            d["line"]["width"] = 1.2
            data.append(d)
    if _has_data(zero):
        data.append(_line(zs, zero, M.ZERO_STD_RATIO, "#6b7280", xaxis="x2", yaxis="y2"))
    if _has_data(adv):
        data.append(_line(aas, adv, "mean |A|", "#059669", xaxis="x2", yaxis="y2"))
    for i, present in enumerate((_has_data(mean), _has_data(zero) or _has_data(adv))):
        if not present:
            sfx = "" if i == 0 else "2"
            dx, dy = lay[f"xaxis{sfx}"]["domain"], lay[f"yaxis{sfx}"]["domain"]
            lay["annotations"].append(dict(text="no data yet", x=sum(dx) / 2, y=sum(dy) / 2, xref="paper",
                                           yref="paper", showarrow=False, font=dict(color="#9ca3af")))
    lay["xaxis"].update(title=dict(text="step"), **whole_steps(s))
    lay["xaxis2"].update(title=dict(text="step"), **whole_steps(zs, aas))
    return Fig(data, lay)


# ---- per-denoising-step statistics ---------------------------------------------------------
SIGNED_STATS = (M.R_MEAN_MINUS_1, M.RHAT_MEAN_MINUS_1, M.LOGR_MEAN, M.LOGRHAT_MEAN, M.BIAS)
STAT_TITLES = {
    M.R_MEAN_MINUS_1: "raw ratio: mean − 1",
    M.R_STD: "raw ratio: std",
    M.RHAT_MEAN_MINUS_1: "normalized ratio (RatioNorm): mean − 1",
    M.RHAT_STD: "normalized ratio (RatioNorm): std",
    M.LOGR_MEAN: "raw log-ratio: mean",
    M.LOGR_STD: "raw log-ratio: std",
    M.LOGRHAT_MEAN: "normalized log-ratio: mean",
    M.LOGRHAT_STD: "normalized log-ratio: std",
    M.POS_ADV_CLIPPED: "A>0 clipped above 1+ε",
    M.NEG_ADV_CLIPPED: "A<0 clipped below 1−ε",
    M.CLIP_HIGH: "clipped above 1+ε",
    M.CLIP_LOW: "clipped below 1−ε",
    M.GRAD_NORM_V: "gradient norm ‖∂L/∂v‖",
    M.APPROX_KL: "approx KL",
    M.GRAD_ZEROED_FRAC: "share of samples with no gradient",
}


def _matrix(steps: Sequence[int] | None, js: Sequence[int] | None, matrix: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (steps, js, M) with M of shape (len(steps), len(js)) and None -> NaN."""
    s = np.asarray([] if steps is None else list(steps), dtype=np.int64)
    j = np.asarray([] if js is None else list(js), dtype=np.int64)
    if matrix is None or s.size == 0 or j.size == 0:
        return s, j, np.zeros((0, 0))
    if isinstance(matrix, np.ndarray) and matrix.shape == (s.size, j.size):
        return s, j, matrix.astype(float, copy=False)
    rows = [_arr(r) for r in matrix] if not isinstance(matrix, np.ndarray) else [np.asarray(r, float) for r in matrix]
    m = np.full((s.size, j.size), np.nan)
    for i, r in enumerate(rows[: s.size]):
        m[i, : min(j.size, r.size)] = r[: j.size]
    return s, j, m


def stat_heatmap(steps: Sequence[int] | None, js: Sequence[int] | None, matrix: Any, *, stat: str,
                 title: str | None = None, uirevision: str | None = None, height: int = 300) -> Fig:
    """Heatmap of one per-denoising-step statistic: x = optimizer step, y = denoising step j
    (0 = pure noise at the bottom). Signed statistics (mean − 1, bias) use a diverging scale
    centred on 0 (negative = red), so the baseline's left shift shows as red growing toward
    low noise while a Guard run stays white."""
    title = title or STAT_TITLES.get(stat, stat)
    s, j, m = _matrix(steps, js, matrix)
    if m.size == 0 or not np.isfinite(m).any():
        return empty_figure(title, uirevision=uirevision, height=height)
    signed = stat in SIGNED_STATS
    z = m.T.astype(np.float32)  # (js, steps)
    hm: dict[str, Any] = dict(type="heatmap", x=s, y=j, z=z, name=stat,
                              colorbar=dict(thickness=12, exponentformat="e", len=0.9),
                              hovertemplate="step %{x}<br>j %{y}<br>%{z:.3e}<extra></extra>")
    if signed:
        lim = float(np.nanmax(np.abs(m))) or 1e-12
        hm.update(colorscale="RdBu", zmid=0.0, zmin=-lim, zmax=lim)
    else:
        hm.update(colorscale="Viridis")
    lay = _layout(title, uirevision, height=height, hovermode="closest")
    lay["xaxis"] = dict(title=dict(text="step"), **whole_steps(s))
    lay["yaxis"] = dict(title=dict(text="denoising step j"), dtick=1 if j.size <= 20 else None)
    lay["margin"] = dict(l=60, r=20, t=45, b=45)
    return Fig([hm], lay)


def _recent_mean(m: np.ndarray, window: int) -> np.ndarray:
    """NaN-aware mean over the last ``window`` rows (per column), NaN where no data."""
    if m.size == 0:
        return np.zeros(0)
    tail = m[-max(1, window):]
    ok = np.isfinite(tail)
    cnt = ok.sum(axis=0)
    tot = np.where(ok, tail, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


CLIP_BY_SIGN_STATS = (M.POS_ADV_CLIPPED, M.NEG_ADV_CLIPPED, M.CLIP_HIGH, M.CLIP_LOW)  # bars, then markers


def clip_by_sign_figure(steps: Sequence[int] | None, js: Sequence[int] | None, stats: Mapping[str, Any],
                        *, window: int = 10, title: str = "Clip fractions by advantage sign",
                        uirevision: str | None = None) -> Fig:
    """Bars per denoising step j: the share of samples with A > 0 and r > 1+ε
    (``pos_adv_clipped``, the key one: about 0 for plain Flow-GRPO, so its upper clip never
    acts) and with A < 0 and r < 1−ε (``neg_adv_clipped``), averaged over the last ``window``
    optimizer steps; ``clip_high`` / ``clip_low`` (any sign) as markers. ``stats`` maps stat
    name -> matrix (rows = ``steps``, columns = ``js``)."""
    series = {}
    j = np.zeros(0, dtype=np.int64)
    for name in CLIP_BY_SIGN_STATS:
        if name in stats and stats[name] is not None:
            _, j2, m = _matrix(steps, js, stats[name])
            if m.size and np.isfinite(m).any():
                series[name] = _recent_mean(m, window)
                j = j2
    if not series:
        return empty_figure(title, uirevision=uirevision)
    colors = {M.POS_ADV_CLIPPED: "#dc2626", M.NEG_ADV_CLIPPED: "#2563eb", M.CLIP_HIGH: "#f87171", M.CLIP_LOW: "#93c5fd"}
    labels = {M.POS_ADV_CLIPPED: "A>0 ∧ r>1+ε", M.NEG_ADV_CLIPPED: "A<0 ∧ r<1−ε",
              M.CLIP_HIGH: "r>1+ε (any A)", M.CLIP_LOW: "r<1−ε (any A)"}
    data = []
    for name in CLIP_BY_SIGN_STATS[:2]:
        if name in series:
            data.append(dict(type="bar", x=j, y=series[name], name=labels[name], marker=dict(color=colors[name])))
    for name in CLIP_BY_SIGN_STATS[2:]:
        if name in series:
            data.append(dict(type="scatter", mode="lines+markers", x=j, y=series[name], name=labels[name],
                             line=dict(color=colors[name], dash="dot", width=1.5), marker=dict(size=6)))
    n = min(window, 0 if steps is None else len(steps))
    # The averaging window goes on the x-axis title: in the title it ran under the toolbar.
    over = "the last step" if n <= 1 else f"mean of the last {n} steps"
    lay = _layout(title, uirevision, barmode="group", hovermode="x", height=360)
    lay["margin"] = dict(l=60, r=20, t=50, b=95)
    lay["legend"] = dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0.0, font=dict(size=11))
    lay["xaxis"] = dict(title=dict(text=f"denoising step j (0 = pure noise) · {over}"),
                        dtick=1 if j.size <= 20 else None)
    lay["yaxis"] = share_axis(max((float(np.nanmax(v)) for v in series.values() if np.isfinite(v).any()), default=0.0))
    for d in data:
        d["hovertemplate"] = f"{d['name']}: %{{y:.2%}}<extra></extra>"
    return Fig(data, lay)


def grad_norm_figure(steps: Sequence[int] | None, js: Sequence[int] | None, matrix: Any, *, window: int = 10,
                     title: str = "Per-denoising-step gradient norm", uirevision: str | None = None) -> Fig:
    """Left: ``grad_norm_v`` per denoising step j (mean of the last ``window`` steps, log
    scale). Right: its spread max_j / min_j per optimizer step, with the Guard target
    (≤ 2.5×; the Flow-GRPO baseline shows about 20–26×, ALGORITHM.md §8)."""
    s, j, m = _matrix(steps, js, matrix)
    if m.size == 0 or not np.isfinite(m).any():
        return empty_figure(title, uirevision=uirevision)
    recent = _recent_mean(m, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(m > 0, m, np.nan)
        ok = np.isfinite(pos).any(axis=1)
        hi = np.full(s.size, np.nan)
        lo = np.full(s.size, np.nan)
        hi[ok] = np.nanmax(pos[ok], axis=1)
        lo[ok] = np.nanmin(pos[ok], axis=1)
        spread = hi / lo
    lay = _layout(title, uirevision, hovermode="closest",
                  **_grid(2, 2, [f"‖∂L/∂v‖ per j (last {min(window, s.size)} steps)", "spread max/min over j"]))
    lay["margin"] = dict(l=55, r=20, t=60, b=45)
    lay["showlegend"] = False
    lay["xaxis"]["title"] = dict(text="denoising step j")
    lay["xaxis"]["dtick"] = 1 if j.size <= 20 else None
    lay["yaxis"].update(log_axis(recent))
    lay["xaxis2"].update(title=dict(text="step"), **whole_steps(s))
    lay["yaxis2"].update(log_axis(np.append(spread, GUARD_SPREAD_TARGET)))
    data = [dict(type="bar", x=j, y=recent, name=M.GRAD_NORM_V, marker=dict(color="#7c3aed")),
            _line(s, spread, "max/min", "#0891b2", xaxis="x2", yaxis="y2")]
    if s.size:
        lay["shapes"] = [dict(type="line", xref="x2", yref="y2", x0=float(s.min()), x1=float(s.max()),
                              y0=GUARD_SPREAD_TARGET, y1=GUARD_SPREAD_TARGET,
                              line=dict(color="#059669", width=1.5, dash="dot"))]
        lay["annotations"].append(dict(text="Guard ≤ 2.5×", x=float(s.max()), y=math.log10(GUARD_SPREAD_TARGET),
                                       xref="x2", yref="y2", xanchor="right", yanchor="bottom", showarrow=False,
                                       font=dict(size=10, color="#059669")))
    return Fig(data, lay)


# ---- scalar panels -------------------------------------------------------------------------
SCALAR_TITLES = {M.KL: "KL to reference", M.LR: "learning rate", M.GRAD_NORM: "grad norm (before clipping)",
                 M.POLICY_LOSS: "policy loss", M.LOSS: "loss"}


def scalars_figure(series: SeriesMap | None, keys: Sequence[str], *, cols: int = 2, title: str = "Training scalars",
                   uirevision: str | None = None, log_y: Sequence[str] = (),
                   missing: Mapping[str, str] | None = None) -> Fig:
    """One small panel per key (in ``keys`` order); a missing key gets an empty panel saying
    so (``missing[key]`` or "no data yet"), so the layout does not jump while a run starts."""
    present = [k for k in keys if _has_data(_series(series, k)[1])]
    if not present:
        return empty_figure(title, uirevision=uirevision)
    rows = math.ceil(len(keys) / cols)
    lay = _layout(title, uirevision, height=max(300, 240 * rows + 40), showlegend=False,
                  **_grid(len(keys), cols, [SCALAR_TITLES.get(k, k) for k in keys], vgap=0.22 if rows > 1 else 0.16))
    lay["margin"] = dict(l=60, r=20, t=70, b=40)
    data = []
    for i, k in enumerate(keys):
        xa, ya = _axis_names(i)
        sfx = "" if i == 0 else str(i + 1)
        s, v = _series(series, k)
        if _has_data(v):
            data.append(_line(s, v, k, PALETTE[i % len(PALETTE)], xaxis=xa, yaxis=ya))
            lay[f"xaxis{sfx}"].update(whole_steps(s))
        else:
            dom_x = lay[f"xaxis{sfx}"]["domain"]
            dom_y = lay[f"yaxis{sfx}"]["domain"]
            lay["annotations"].append(dict(text=(missing or {}).get(k, "no data yet"), x=sum(dom_x) / 2, y=sum(dom_y) / 2, xref="paper",
                                           yref="paper", showarrow=False, font=dict(color="#9ca3af")))
        if k in log_y:
            lay[f"yaxis{sfx}"].update(log_axis(v))
        else:
            lay[f"yaxis{sfx}"]["exponentformat"] = "e" if k == M.LR else "none"
    return Fig(data, lay)

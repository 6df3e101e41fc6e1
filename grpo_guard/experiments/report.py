"""An experiment's report: its runs' curves read from the store, the statistics of
:mod:`grpo_guard.experiments.stats`, and the two files ``grpo-guard experiment report`` writes —
``table.md`` (markdown) and ``figure.png`` (matplotlib). ``benchmarks/overoptimization/report.py``
calls the same table and figure code, so the study and the product print the same numbers.

Torch-free; matplotlib is imported only to draw the figure.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence

from grpo_guard import metrics as M
from grpo_guard.experiments.alarm import AlarmVerdict
from grpo_guard.experiments.config import arm_of_control, control_arm
from grpo_guard.experiments.stats import (
    Estimate,
    ExperimentStats,
    RunCurves,
    experiment_stats,
    is_control,
    run_alarm,
)

RATIO_STATS = ("r_mean_minus_1", "r_std", "rhat_mean_minus_1", "rhat_std", "pos_adv_clipped", "neg_adv_clipped")
ALL_POINTS = 1_000_000  # read every eval point: the statistics must not see a downsampled curve


def load_curves(experiment_id: int, arms: Collection[str] | None = None) -> list[RunCurves]:
    """Every run of the experiment (of ``arms`` only, when given) as :class:`RunCurves`,
    straight from the stored scalars and per-denoising-step statistics (nothing downsampled)."""
    from grpo_guard.store import queries

    out = []
    for m in queries.experiment_runs(experiment_id):
        if arms is not None and m.arm not in arms:
            continue
        row = queries.get_run(m.run.id)
        weights = {str(k): float(v) for k, v in (row.config.get("rewards") or {}).items()}
        keys = [k for k in queries.metric_keys(row.id) if k.startswith(M.EVAL_PREFIX)]
        series = queries.metric_series(row.id, keys, max_points=ALL_POINTS) if keys else {}
        steps, _ = series.get(M.EVAL_PROXY, ([], []))
        gold_at = dict(zip(*series.get(M.EVAL_GOLD, ([], [])), strict=True))
        steps = [s for s in steps if s in gold_at]
        proxy_at = dict(zip(*series[M.EVAL_PROXY], strict=True)) if steps else {}
        parts = {}  # every eval score by name (proxy rewards, gold evaluators, their breakdowns)
        for key, (st, vals) in series.items():
            at = dict(zip(st, vals, strict=True))
            if key not in (M.EVAL_PROXY, M.EVAL_GOLD) and all(s in at for s in steps):
                parts[key[len(M.EVAL_PREFIX):]] = [at[s] for s in steps]
        per_step: dict[int, dict[str, float]] = {}
        for stat in RATIO_STATS:
            _, js, matrix = queries.step_stats_matrix(row.id, stat, max_steps=ALL_POINTS)
            for col, j in enumerate(js):
                vals = [r[col] for r in matrix if r[col] is not None and math.isfinite(r[col])]
                if vals:
                    per_step.setdefault(int(j), {})[stat] = sum(vals) / len(vals)
        out.append(RunCurves(row.id, m.arm, m.seed, list(steps), [proxy_at[s] for s in steps],
                             [gold_at[s] for s in steps], parts, weights, per_step, row.algorithm,
                             row.config.get("ratio_norm")))
    return out


def run_verdict(run_id: int, experiment: tuple[int, str, int]) -> AlarmVerdict | None:
    """The alarm of one run of an experiment (``experiment``: its id, arm label and seed), against
    its arm's no-signal control when the experiment has one; None for a control or a run with no
    eval yet."""
    eid, arm, _ = experiment
    if arm_of_control(arm) is not None:
        return None
    curves = load_curves(eid, arms={arm, control_arm(arm)})
    run = next((c for c in curves if c.run_id == run_id and c.steps), None)
    if run is None:
        return None
    return run_alarm(run, [c for c in curves if c.arm == control_arm(arm) and c.steps])


# ---- the table ------------------------------------------------------------------------------------
def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells: Sequence[str]) -> list[str]:
    return [_row(cells), "|---" * len(cells) + "|"]


def _thin(steps: Sequence[int], most: int = 8) -> list[int]:
    """At most ``most`` evenly chosen steps (first and last kept) for a readable table."""
    if len(steps) <= most:
        return list(steps)
    idx = sorted({round(i * (len(steps) - 1) / (most - 1)) for i in range(most)})
    return [steps[i] for i in idx]


def _series_table(title: str, data: Mapping[str, tuple[list[int], list[Estimate]]], names: Mapping[str, str]) -> list[str]:
    steps = sorted(set().union(*(set(s) for s, _ in data.values()))) if data else []
    shown = _thin(steps)
    lines = ["", title, "", *_head(["arm", *(f"step {s}" for s in shown)])]
    for a, (st, est) in data.items():
        at = dict(zip(st, est, strict=True))
        lines.append(_row([names.get(a, a), *(at[s].fmt(3) if s in at else "–" for s in shown)]))
    return lines


def experiment_table(stats: ExperimentStats, *, title: str = "Experiment", names: Mapping[str, str] | None = None) -> str:
    """The markdown report: proxy and gold by step, gold at equal proxy, gold lost beyond noise,
    per-step ratio statistics and the alarm per run; every cell mean ± 95 % interval over seeds."""
    names = dict(names or {})
    n = {a: len(rs) for a, rs in stats.runs.items()}
    lines = [f"# {title}", "", "Every number is a mean over seeds ± the half-width of its 95 % t-interval "
             "(none with one seed). Seeds per arm: " + ", ".join(f"{names.get(a, a)} {k}" for a, k in n.items()) + "."]
    lines += _series_table("Eval proxy by step:", stats.proxy, names)
    lines += _series_table("Eval gold by step:", stats.gold, names)
    mains = list(stats.gold_at_proxy)
    if stats.levels:
        lines += ["", "Gold at equal eval proxy (each seed's gold-vs-proxy path, linearly interpolated where the "
                  "proxy first reaches the level; levels every run of every arm reaches):", "",
                  *_head(["proxy level", *(names.get(a, a) for a in mains)])]
        for i, lv in enumerate(stats.levels):
            lines.append(_row([f"{lv:.4f}", *(stats.gold_at_proxy[a][i].fmt() for a in mains)]))
    else:
        lines += ["", "Gold at equal eval proxy: no proxy level is reached by every run of every arm."]
    if stats.beyond_step:
        lines += _series_table("Gold lost beyond noise: arm − its no-signal control, paired by seed, at equal step "
                               "(negative = gold lost to the proxy itself):", stats.beyond_step,
                               {a: f"{names.get(a, a)} − control" for a in stats.beyond_step})
        if stats.levels:
            lines += ["", "Gold lost beyond noise at equal proxy (where the control's path reaches the level):", "",
                      *_head(["proxy level", *(f"{names.get(a, a)} − control" for a in stats.beyond_proxy)])]
            for i, lv in enumerate(stats.levels):
                lines.append(_row([f"{lv:.4f}", *(stats.beyond_proxy[a][i].fmt() for a in stats.beyond_proxy)]))
    js = sorted({j for rs in stats.ratios.values() for j in rs})
    if js:
        lines += ["", "Per-denoising-step ratio statistics (the ratio each arm clips: r̂ for RatioNorm, else r; "
                  "mean over epochs, then over seeds):", "",
                  *_head(["j", *(f"{names.get(a, a)} {c}" for a in stats.arms for c in ("r−1", "std", "clipped +/−"))])]
        for j in js:
            cells = []
            for a in stats.arms:
                st = stats.ratios[a].get(j, {})
                m, s = st.get("mean_minus_1"), st.get("std")
                pc, nc = st.get("pos_adv_clipped"), st.get("neg_adv_clipped")
                cells += [f"{m.mean:+.2e}" if m and m.n else "–", f"{s.mean:.2e}" if s and s.n else "–",
                          f"{pc.mean:.2f} / {nc.mean:.2f}" if pc and nc and pc.n and nc.n else "–"]
            lines.append(_row([str(j), *cells]))
    lines += ["", "Over-optimisation alarm per run:", ""]
    for a, verdicts in stats.alarms.items():
        for r, v in zip(stats.runs[a], verdicts, strict=True):
            onset = "—" if v.onset is None else f"step {v.onset}"
            lines.append(f"- {names.get(a, a)} seed {r.seed} (run {r.run_id}): {onset} ({v.method}: {v.note})")
    return "\n".join(lines) + "\n"


# ---- the figure -----------------------------------------------------------------------------------
def experiment_figure(stats: ExperimentStats, path: str, *, names: Mapping[str, str] | None = None) -> str:
    """Proxy and gold by step per arm (mean and 95 % band over seeds; controls dashed, gold only),
    gold against proxy per arm (the band at equal proxy) and gold lost beyond noise; a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the report figure needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dict(names or {})
    panels = 4 if stats.beyond_step else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mains = [a for a in stats.arms if not is_control(a)]
    color = {a: colors[i % len(colors)] for i, a in enumerate(mains)}
    for a in stats.arms:
        ctrl = is_control(a)
        c = color.get(a.rsplit("/", 1)[0], "gray")
        for ax, key in ((axes[0], "proxy"), (axes[1], "gold")):
            if ctrl and key == "proxy":
                continue
            steps, est = getattr(stats, key)[a]
            ax.plot(steps, [e.mean for e in est], color=c, ls="--" if ctrl else "-", label=names.get(a, a))
            ax.fill_between(steps, [_lo(e) for e in est], [_hi(e) for e in est], color=c, alpha=0.08 if ctrl else 0.18)
    for a in mains:
        est = stats.gold_at_proxy.get(a, [])
        if stats.levels:
            axes[2].plot(stats.levels, [e.mean for e in est], color=color[a], marker="o", label=names.get(a, a))
            axes[2].fill_between(stats.levels, [_lo(e) for e in est], [_hi(e) for e in est], color=color[a], alpha=0.18)
        for r in stats.runs[a]:
            axes[2].plot(r.proxy, r.gold, color=color[a], alpha=0.25, lw=0.8)
    if stats.beyond_step:
        for a, (steps, est) in stats.beyond_step.items():
            axes[3].plot(steps, [e.mean for e in est], color=color[a], label=f"{names.get(a, a)} − control")
            axes[3].fill_between(steps, [_lo(e) for e in est], [_hi(e) for e in est], color=color[a], alpha=0.18)
        axes[3].axhline(0, color="gray", lw=0.8)
        axes[3].set_title("gold lost beyond noise (arm − control)")
        axes[3].set_xlabel("step")
    axes[0].set_title("eval proxy (mean ± 95 % CI)")
    axes[1].set_title("eval gold (dashed: no-signal controls)")
    axes[2].set_title("gold at equal proxy (each seed faint)")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("step")
    axes[2].set_xlabel("eval proxy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lo(e: Estimate) -> float:
    return e.lo if math.isfinite(e.half) else e.mean


def _hi(e: Estimate) -> float:
    return e.hi if math.isfinite(e.half) else e.mean


def write_report(experiment_id: int, out: str) -> dict[str, str]:
    """Write ``table.md``, ``figure.png`` and ``stats.json`` (the numbers behind both) for a
    stored experiment into ``out``; return their paths."""
    from grpo_guard.store import queries

    exp = queries.get_experiment(experiment_id)
    stats = experiment_stats(load_curves(experiment_id))
    if not stats.arms:
        raise ValueError(f"experiment {experiment_id} has no evaluated run yet: nothing to report")
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, f) for k, f in (("table", "table.md"), ("figure", "figure.png"), ("stats", "stats.json"))}
    with open(paths["table"], "w", encoding="utf-8") as fh:
        fh.write(experiment_table(stats, title=f"Experiment {exp.id}: {exp.name}"))
    with open(paths["stats"], "w", encoding="utf-8") as fh:
        json.dump(stats.to_dict(), fh, indent=1)
    experiment_figure(stats, paths["figure"])
    return paths

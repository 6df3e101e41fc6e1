"""Reading the experiment's runs and writing its table, summary and figure.

The runs come from run directories (``run.py``) or from the store (``--experiment ID``: the
experiment files of ``experiments/`` submitted with ``grpo-guard experiment submit``). The
figure, gold at equal proxy and the interval statistics are the product's own
(``grpo_guard.experiments.stats`` / ``grpo_guard.experiments.report``), so the study and
``grpo-guard experiment report`` share one code path; the tables below keep this study's layout.

    python benchmarks/overoptimization/report.py --experiment 3 [4 ...] --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from arms import ARMS, CONTROL_OF, HERE, ROOT, run_dir

sys.path.insert(0, ROOT)  # run as a script: the repository's grpo_guard, not another install
from grpo_guard.experiments.stats import RunCurves, experiment_stats, gold_at_proxy  # noqa: E402


def label(arm: str) -> str:
    """The arm's display name (an arm of an experiment file not in ``ARMS`` shows its own name)."""
    return ARMS[arm][2] if arm in ARMS else arm


# ---- reading ------------------------------------------------------------------------------------
def read_run(path: str) -> dict:
    from grpo_guard.training.recording import read_jsonl

    evals: dict[int, dict[str, float]] = {}
    for r in read_jsonl(os.path.join(path, "scalars.jsonl"), dedupe=False):
        for k, v in r.items():
            if k.startswith(("eval/", "alarm/")) and v is not None:
                evals.setdefault(r["step"], {})[k] = v
    steps = sorted(s for s, e in evals.items() if "eval/proxy" in e)
    per_step: dict[int, dict[str, list[float]]] = {}
    for r in read_jsonl(os.path.join(path, "step_stats.jsonl")):
        st = per_step.setdefault(r["denoise_index"], {})
        for k, v in r["stats"].items():
            if v is not None:
                st.setdefault(k, []).append(v)
    onset = [e["alarm/hacking_onset"] for e in evals.values() if "alarm/hacking_onset" in e]
    return {"steps": steps, "proxy": [evals[s]["eval/proxy"] for s in steps],
            "gold": [evals[s]["eval/gold"] for s in steps],
            "parts": {k: [evals[s].get(k) for s in steps] for k in evals[steps[0]] if k.startswith("eval/")} if steps else {},
            "per_step": {j: {k: sum(v) / len(v) for k, v in st.items()} for j, st in sorted(per_step.items())},
            "onset": onset[0] if onset else None}


# ---- reporting ----------------------------------------------------------------------------------
def fmt(x) -> str:
    """mean ± std of an array (over seeds)."""
    return f"{x.mean():.4f} ± {x.std():.4f}"


def is_control(arm: str) -> bool:
    """A no-signal control (proxy ``null_noise``): its proxy is on another scale, so it takes no
    part in the equal-proxy tables; its gold curve is the floor of what optimisation noise costs."""
    return arm.endswith("_null")



def control_of(arm: str, controls: list[str]) -> str | None:
    """The no-signal control that differs from ``arm`` only in the proxy, if reported."""
    c = CONTROL_OF.get(arm, f"{arm}_null")  # an experiment's own arms: <arm>_null (store_runs)
    return c if c in controls else None


def gold_by_epoch_lines(arms: list[str], controls: list[str], common: dict, curve) -> list[str]:

    epochs = sorted(set.intersection(*(set(common[a]) for a in arms)))
    epochs = [e for e in epochs if e % 8 == 0] or epochs
    out = ["", "Gold by epoch (mean ± std over seeds); the no-signal controls optimise `null_noise`, a "
           "reward with no information, so their gold loss is what optimisation noise alone costs:", "",
           "| arm | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---" * (len(epochs) + 1) + "|"]
    for a in arms:
        g = curve(a, "gold")
        cells = [f"{g[:, common[a].index(e)].mean():.3f} ± {g[:, common[a].index(e)].std():.3f}" for e in epochs]
        out.append(f"| {label(a)} | " + " | ".join(cells) + " |")
    rows = []
    for a in arms:
        c = control_of(a, controls)
        if is_control(a) or c is None:
            continue
        ga, gc = curve(a, "gold").mean(0), curve(c, "gold").mean(0)
        rows.append(f"| {label(a)} − {label(c)} | " + " | ".join(
            f"{ga[common[a].index(e)] - gc[common[c].index(e)]:+.3f}" for e in epochs) + " |")
    if rows:
        out += ["", "Gold beyond optimisation noise: an arm's mean gold minus that of the no-signal control "
                "that differs from it only in the proxy (negative = gold lost to the proxy itself, i.e. "
                "over-optimisation):", "",
                "| difference | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
                "|---" * (len(epochs) + 1) + "|", *rows]
    return out


def previous_summary(out: str) -> dict[str, dict[int, dict]]:
    """The per-run curves of ``out/summary.json`` ({arm: {seed: read_run(...)}}), or {}."""
    try:
        with open(os.path.join(out, "summary.json")) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {a: {int(s): {**r, "per_step": {int(j): v for j, v in r.get("per_step", {}).items()}}
                for s, r in rs.items()} for a, rs in data.items() if isinstance(rs, dict)}


def equal_proxy_lines(arms: list[str], runs: dict) -> list[str]:
    """Gold at equal eval proxy (interpolated crossings) and pooled in proxy bins, for arms that
    optimise the same proxy (the first one is the baseline)."""
    import numpy as np

    lines: list[str] = []
    # gold at equal proxy: levels every run of every arm reaches
    start = max(r["proxy"][0] for a in arms for r in runs[a].values())
    top = min(max(r["proxy"]) for a in arms for r in runs[a].values())
    levels = np.linspace(start, top, 6)[1:] if top > start else np.array([])
    lines += ["", "Gold at equal eval proxy (first time each run reaches the level; linear interpolation):", ""]
    lines += ["| proxy level | " + " | ".join(label(a) for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    eq = {}
    for lv in levels:
        row = []
        for a in arms:
            vals = [gold_at_proxy(r["proxy"], r["gold"], float(lv)) for r in runs[a].values()]
            vals = np.array([v for v in vals if v is not None])
            eq.setdefault(a, []).append(float(vals.mean()) if len(vals) else float("nan"))
            row.append(fmt(vals) if len(vals) else "–")
        lines.append(f"| {lv:.4f} | " + " | ".join(row) + " |")
    if levels.size:
        for other in arms[1:]:
            diff = np.nanmean(np.array(eq[other]) - np.array(eq[arms[0]]))
            lines += ["", f"Mean gold difference at equal proxy, {label(other)} − {label(arms[0])}: {diff:+.4f}"]
    # pooled view: every eval point of every seed, binned by proxy (robust to one run's noisy crossing)
    pts = {a: np.array([(p, g) for r in runs[a].values() for p, g in zip(r["proxy"], r["gold"], strict=True)])
           for a in arms}
    lo = min(v[:, 0].min() for v in pts.values())
    hi = max(v[:, 0].max() for v in pts.values())
    edges = np.arange(np.floor(lo * 20) / 20, hi + 0.05, 0.05)
    lines += ["", "Gold at equal eval proxy, pooled: mean gold of all eval points (all epochs, all seeds) in "
              "each proxy bin (n = points):", "",
              "| proxy bin | " + " | ".join(label(a) for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for b0, b1 in zip(edges[:-1], edges[1:], strict=True):
        cells = []
        for a in arms:
            m = (pts[a][:, 0] >= b0) & (pts[a][:, 0] < b1)
            cells.append(f"{pts[a][m, 1].mean():.4f} (n={int(m.sum())})" if m.any() else "–")
        lines.append(f"| {b0:.2f}–{b1:.2f} | " + " | ".join(cells) + " |")
    return lines


def report(arms: list[str], seeds: list[int], out: str, runs: dict[str, dict[int, dict]] | None = None) -> str:
    """Write ``table.md``, ``summary.json`` and ``figure.png`` under ``out``: from the run
    directories under ``out``, or from ``runs`` ({arm: {seed: run}}, e.g. :func:`store_runs`)."""
    import numpy as np

    previous = previous_summary(out)
    if runs is None:
        runs = {a: {s: read_run(run_dir(out, a, s)) for s in seeds
                    if os.path.exists(os.path.join(run_dir(out, a, s), "scalars.jsonl"))} for a in arms}
        # Runs whose directories are gone (they are not committed) come from the last summary.json, so
        # a new arm can be added to a finished experiment without re-running the old ones.
        for a, rs in previous.items():
            if a in runs:
                for s, r in rs.items():
                    if s in seeds and s not in runs[a]:
                        runs[a][s] = r
    runs = {a: runs.get(a, {}) for a in arms}
    runs = {a: {s: r for s, r in rs.items() if r["steps"]} for a, rs in runs.items()}
    arms = [a for a in arms if runs[a]]
    if not arms:  # e.g. a time-boxed call stopped every run before its first eval
        return "No run has an eval yet: nothing to report."
    common = {a: sorted(set.intersection(*(set(r["steps"]) for r in runs[a].values()))) for a in arms}

    def curve(a: str, key: str) -> np.ndarray:  # (seeds, steps) on the arm's common steps
        return np.array([[r[key][r["steps"].index(s)] for s in common[a]] for r in runs[a].values()])

    lines = ["# Results", ""]
    lines.append(f"Seeds: {', '.join(str(s) for s in seeds)}. Eval: mean over the fixed prompt × seed set, ODE "
                 "sampling with the EMA weights. Numbers are means over seeds (± std over seeds).")
    lines.append("")
    base = arms[0]
    g_base = curve(base, "gold").mean(0)
    peak = common[base][int(np.argmax(g_base))]
    lines += [f"| arm | proxy @0 | gold @0 | proxy @ baseline gold peak (epoch {peak}) | gold @ peak | proxy @ end | gold @ end |",
              "|---|---|---|---|---|---|---|"]

    for a in arms:
        p, g = curve(a, "proxy"), curve(a, "gold")
        i_peak = common[a].index(peak) if peak in common[a] else int(np.argmin(np.abs(np.array(common[a]) - peak)))
        lines.append(f"| {label(a)} | {fmt(p[:, 0])} | {fmt(g[:, 0])} | {fmt(p[:, i_peak])} | {fmt(g[:, i_peak])} | "
                     f"{fmt(p[:, -1])} | {fmt(g[:, -1])} |")
    # No-signal controls: gold by epoch, and what each arm loses beyond its algorithm's control
    controls = [a for a in arms if is_control(a)]
    if controls:
        lines += gold_by_epoch_lines(arms, controls, common, curve)
    # the proxy tables compare arms that optimise the same proxy
    lines += equal_proxy_lines([a for a in arms if not is_control(a)], runs)
    # what moved: every eval component at the start and at the end
    keys = sorted({k for rs in runs.values() for r in rs.values() for k in r["parts"]}
                  - {"eval/proxy", "eval/gold", "eval/gold_rel"})
    lines += ["", "Every eval score at the start and at the end (mean over seeds):", "",
              "| score | start | " + " | ".join(f"{label(a)} end" for a in arms) + " |", "|---" * (len(arms) + 2) + "|"]
    def first_last(a: str, k: str, i: int) -> float:  # nan where an arm does not score k
        vals = [r["parts"][k][i] for r in runs[a].values() if r["parts"].get(k)]
        return float(np.mean(vals)) if vals else float("nan")

    for k in keys:
        first = next((v for v in (first_last(a, k, 0) for a in arms) if v == v), float("nan"))
        ends = [first_last(a, k, -1) for a in arms]
        lines.append(f"| {k[5:]} | {first:.4f} | " + " | ".join("–" if e != e else f"{e:.4f}" for e in ends) + " |")
    # per-step ratio statistics
    lines += ["", "Per-denoising-step ratio statistics (the ratio each arm clips: r for Flow-GRPO, r̂ for Guard), "
              "mean over epochs and seeds:", ""]
    js = sorted({j for rs in runs.values() for r in rs.values() for j in r["per_step"]})
    head = " | ".join(f"{label(a)} r−1 | {label(a)} std | {label(a)} P(A>0, r>1+ε) / P(A<0, r<1−ε)"
                      for a in arms)
    lines += [f"| j | {head} |", "|---" * (1 + 3 * len(arms)) + "|"]
    for j in js:
        cells = []
        for a in arms:
            key_m, key_s = ("rhat_mean_minus_1", "rhat_std") if a.startswith("grpo_guard") else ("r_mean_minus_1", "r_std")
            # (fractions of all samples at step j, averaged over every epoch's update)
            vals = [r["per_step"].get(j, {}) for r in runs[a].values()]
            m = np.mean([v.get(key_m, np.nan) for v in vals])
            s = np.mean([v.get(key_s, np.nan) for v in vals])
            pc = np.mean([v.get("pos_adv_clipped", np.nan) for v in vals])
            nc = np.mean([v.get("neg_adv_clipped", np.nan) for v in vals])
            cells.append(f"{m:+.2e} | {s:.2e} | {pc:.2f} / {nc:.2f}")
        lines.append(f"| {j} | " + " | ".join(cells) + " |")
    lines += ["", "Over-optimisation alarm (ALGORITHM.md §10) onset per run:", ""]
    for a in arms:
        lines.append(f"- {label(a)}: " + ", ".join(f"seed {s}: {r['onset'] if r['onset'] is not None else '—'}"
                                                   for s, r in runs[a].items()))
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table)
    # arms not in this report stay in the summary (their run directories may be gone)
    merged = {**previous, **{a: rs for a, rs in runs.items() if rs}}
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({a: {str(s): r for s, r in sorted(rs.items())} for a, rs in merged.items()}, fh, indent=1)
    figure(arms, runs, os.path.join(out, "figure.png"))
    return table


def partners(arms: list[str]) -> dict[str, str]:
    """{control: the arm it matches} among ``arms``."""
    controls = [a for a in arms if is_control(a)]
    return {c: a for a in arms if not is_control(a) and (c := control_of(a, controls))}


def curves_of(arms: list[str], runs: dict[str, dict[int, dict]]) -> list[RunCurves]:
    """The study's runs as the product's :class:`RunCurves`; a no-signal arm becomes the control
    (``<arm>/control``) of the arm it matches (``CONTROL_OF``), so it takes no part in the
    equal-proxy statistics and is drawn dashed."""
    partner = partners(arms)
    out = []
    for a in arms:
        name = f"{partner.get(a, a)}/control" if is_control(a) else a
        for s, r in runs[a].items():
            out.append(RunCurves(0, name, int(s), list(r["steps"]), list(r["proxy"]), list(r["gold"]),
                                 {k[5:]: v for k, v in r.get("parts", {}).items()}, {},
                                 {int(j): v for j, v in r.get("per_step", {}).items()},
                                 "grpo_guard" if a.startswith("grpo_guard") else "flow_grpo"))
    return out


def figure(arms: list[str], runs: dict[str, dict[int, dict]], path: str) -> None:
    """The product's experiment figure (mean ± 95 % bands over seeds, gold at equal proxy, gold
    lost beyond noise) of the study's arms."""
    from grpo_guard.experiments.report import experiment_figure

    partner = partners(arms)
    names = {(f"{partner.get(a, a)}/control" if is_control(a) else a): label(a) for a in arms}
    experiment_figure(experiment_stats(curves_of(arms, runs)), path, names=names)


# ---- from the store ----------------------------------------------------------------------------
def store_runs(experiment_ids: list[int]) -> tuple[list[str], list[int], dict[str, dict[int, dict]]]:
    """(arms, seeds, runs) of stored experiments in this study's form: an experiment's arm keeps
    its name and ``<arm>/control`` becomes the study's control name (``CONTROL_OF``, else
    ``<arm>_null``)."""
    from grpo_guard import metrics as M
    from grpo_guard.experiments.report import load_curves
    from grpo_guard.store import queries

    arms: list[str] = []
    seeds: set[int] = set()
    runs: dict[str, dict[int, dict]] = {}
    for eid in experiment_ids:
        for c in load_curves(eid):
            base = c.arm.removesuffix("/control")
            arm = CONTROL_OF.get(base, f"{base}_null") if c.arm != base else base
            onset = queries.metric_series(c.run_id, [M.ALARM_ONSET]).get(M.ALARM_ONSET, ([], []))[1]
            runs.setdefault(arm, {})[c.seed] = {
                "steps": c.steps, "proxy": c.proxy, "gold": c.gold,
                "parts": {f"eval/{k}": v for k, v in c.parts.items()}, "per_step": c.per_step,
                "onset": onset[0] if onset else None}
            seeds.add(c.seed)
            if arm not in arms:
                arms.append(arm)
    return arms, sorted(seeds), runs


def main() -> None:
    ap = argparse.ArgumentParser(description="The study's table, summary and figure from stored experiments.")
    ap.add_argument("--experiment", type=int, nargs="+", required=True, metavar="ID",
                    help="experiments submitted from experiments/*.yaml (grpo-guard experiment submit)")
    ap.add_argument("--out", default=os.path.join(HERE, "results_store"))
    args = ap.parse_args()
    arms, seeds, runs = store_runs(args.experiment)
    if not arms:
        sys.exit("those experiments have no evaluated run yet")
    os.makedirs(args.out, exist_ok=True)
    print(report(arms, seeds, args.out, runs=runs))


if __name__ == "__main__":
    main()

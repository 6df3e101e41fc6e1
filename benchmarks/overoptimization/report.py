"""Reading the experiment's run directories and writing its table, summary and figure."""

from __future__ import annotations

import json
import os

from arms import ARMS, COLORS, CONTROL_OF, run_dir


# ---- reading ------------------------------------------------------------------------------------
def read_run(path: str) -> dict:
    from grpo_guard.recording import read_jsonl

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


def gold_at_proxy(proxy: list[float], gold: list[float], level: float) -> float | None:
    """Gold, linearly interpolated, where the eval proxy first reaches ``level`` (None if never)."""
    for i in range(1, len(proxy)):
        lo, hi = proxy[i - 1], proxy[i]
        if lo < level <= hi:
            w = (level - lo) / (hi - lo)
            return gold[i - 1] + w * (gold[i] - gold[i - 1])
    return gold[0] if proxy and proxy[0] >= level else None


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
    c = CONTROL_OF.get(arm)
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
        out.append(f"| {ARMS[a][2]} | " + " | ".join(cells) + " |")
    rows = []
    for a in arms:
        c = control_of(a, controls)
        if is_control(a) or c is None:
            continue
        ga, gc = curve(a, "gold").mean(0), curve(c, "gold").mean(0)
        rows.append(f"| {ARMS[a][2]} − {ARMS[c][2]} | " + " | ".join(
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
    lines += ["| proxy level | " + " | ".join(ARMS[a][2] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
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
            lines += ["", f"Mean gold difference at equal proxy, {ARMS[other][2]} − {ARMS[arms[0]][2]}: {diff:+.4f}"]
    # pooled view: every eval point of every seed, binned by proxy (robust to one run's noisy crossing)
    pts = {a: np.array([(p, g) for r in runs[a].values() for p, g in zip(r["proxy"], r["gold"], strict=True)])
           for a in arms}
    lo = min(v[:, 0].min() for v in pts.values())
    hi = max(v[:, 0].max() for v in pts.values())
    edges = np.arange(np.floor(lo * 20) / 20, hi + 0.05, 0.05)
    lines += ["", "Gold at equal eval proxy, pooled: mean gold of all eval points (all epochs, all seeds) in "
              "each proxy bin (n = points):", "",
              "| proxy bin | " + " | ".join(ARMS[a][2] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for b0, b1 in zip(edges[:-1], edges[1:], strict=True):
        cells = []
        for a in arms:
            m = (pts[a][:, 0] >= b0) & (pts[a][:, 0] < b1)
            cells.append(f"{pts[a][m, 1].mean():.4f} (n={int(m.sum())})" if m.any() else "–")
        lines.append(f"| {b0:.2f}–{b1:.2f} | " + " | ".join(cells) + " |")
    return lines


def report(arms: list[str], seeds: list[int], out: str) -> str:
    import numpy as np

    runs = {a: {s: read_run(run_dir(out, a, s)) for s in seeds if os.path.exists(os.path.join(run_dir(out, a, s), "scalars.jsonl"))}
            for a in arms}
    # Runs whose directories are gone (they are not committed) come from the last summary.json, so
    # a new arm can be added to a finished experiment without re-running the old ones.
    previous = previous_summary(out)
    for a, rs in previous.items():
        if a in runs:
            for s, r in rs.items():
                if s in seeds and s not in runs[a]:
                    runs[a][s] = r
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
        lines.append(f"| {ARMS[a][2]} | {fmt(p[:, 0])} | {fmt(g[:, 0])} | {fmt(p[:, i_peak])} | {fmt(g[:, i_peak])} | "
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
              "| score | start | " + " | ".join(f"{ARMS[a][2]} end" for a in arms) + " |", "|---" * (len(arms) + 2) + "|"]
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
    head = " | ".join(f"{ARMS[a][2]} r−1 | {ARMS[a][2]} std | {ARMS[a][2]} P(A>0, r>1+ε) / P(A<0, r<1−ε)"
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
        lines.append(f"- {ARMS[a][2]}: " + ", ".join(f"seed {s}: {r['onset'] if r['onset'] is not None else '—'}"
                                                   for s, r in runs[a].items()))
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table)
    # arms not in this report stay in the summary (their run directories may be gone)
    merged = {**previous, **{a: rs for a, rs in runs.items() if rs}}
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({a: {str(s): r for s, r in sorted(rs.items())} for a, rs in merged.items()}, fh, indent=1)
    figure(arms, runs, common, curve, peak, os.path.join(out, "figure.png"))
    return table


def figure(arms, runs, common, curve, peak, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for a in arms:
        x = common[a]
        control = is_control(a)  # its proxy is another reward: gold only, dashed
        for ax, key, label in ((axes[0], "proxy", "eval proxy"), (axes[1], "gold", "eval gold")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if control and key == "proxy":
                continue
            y = curve(a, key)
            ax.plot(x, y.mean(0), color=COLORS[a], label=ARMS[a][2], lw=1.5 if control else 2,
                    ls="--" if control else "-")
            ax.fill_between(x, y.min(0), y.max(0), color=COLORS[a], alpha=0.08 if control else 0.15)
        if control:
            continue
        for r in runs[a].values():
            axes[2].plot(r["proxy"], r["gold"], color=COLORS[a], alpha=0.5, marker=".", lw=1)
        axes[2].plot([], [], color=COLORS[a], label=ARMS[a][2])
    axes[1].axvline(peak, color="gray", ls=":", lw=1)
    axes[0].set_title("proxy (optimised)")
    axes[1].set_title("gold (held out; dotted: baseline's peak)")
    axes[2].set_title("gold against proxy (each run)")
    axes[2].set_xlabel("eval proxy")
    axes[2].set_ylabel("eval gold")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

"""Benchmark evaluations on Compare (one table per benchmark across the selected runs, each run's
latest evaluated checkpoint beside the base model) and on Experiments (per arm, the mean ± 95 %
t-interval over seeds of each run's latest evaluation). Torch-free; reads ``evaluations``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.common import esc, parse_int


def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def latest_by_run(run_ids: Sequence[int]) -> dict[str, dict[int, Any]]:
    """benchmark -> run id -> that run's latest succeeded evaluation."""
    from grpo_guard.store import evaluations as store

    out: dict[str, dict[int, Any]] = {}
    for r in store.evaluations_of(list(run_ids)):
        if r.status == "succeeded" and r.model.run_id is not None:
            out.setdefault(r.benchmark, {})[r.model.run_id] = r  # oldest first: the latest wins
    return out


def _metrics(bench: str, rows: Sequence[Any]) -> list[str]:
    from grpo_guard.evaluation.benchmarks import BENCHMARKS

    present = sorted({m for r in rows for m in r.metrics})
    names = BENCHMARKS[bench].metric_names(present) if bench in BENCHMARKS else present
    # the protocol's metrics in its order, then any a request added (preference: the config's gold)
    names += [m for m in present if m not in names]
    return [m for m in names if any(m in r.metrics for r in rows)]


def _base(row: Any) -> Any:
    from grpo_guard.evaluation.request import base_key
    from grpo_guard.store import evaluations as store

    return store.find_result(base_key(row.protocol.get("_request", {}).get("config", {})), row.benchmark,
                             row.protocol_hash)


def compare_html(run_ids: Sequence[Any]) -> str:
    ids = [int(i) for i in run_ids or []]
    by_bench = latest_by_run(ids)
    if not by_bench:
        return ('<div class="gg-muted">No benchmark evaluations of these runs yet (Run page: Checkpoints → '
                'Evaluate…, or <code>grpo-guard eval --run ID</code>).</div>')
    out = []
    for bench, runs in by_bench.items():
        rows = [runs[i] for i in ids if i in runs]
        base = _base(rows[-1])
        head = "".join(f'<th>run #{r.model.run_id} @ {r.model.step}</th>' for r in rows)
        body = []
        for m in _metrics(bench, rows):
            b = base.metrics.get(m) if base else None
            cells = "".join(
                f'<td data-run="{r.model.run_id}" data-metric="{esc(m)}">{_fmt(r.metrics.get(m))}'
                + (f' <span class="gg-muted">({r.metrics[m] / b:.2f}×)</span>' if m in r.metrics and b else "")
                + "</td>" for r in rows)
            body.append(f'<tr><td>{esc(m)}</td><td data-run="base" data-metric="{esc(m)}">{_fmt(b)}</td>{cells}</tr>')
        mixed = len({r.protocol_hash for r in rows}) > 1
        note = ('<div class="gg-warn">These runs were evaluated under different protocols (prompts, images per '
                'prompt or sampler); compare with care.</div>' if mixed else "")
        out.append(f'<div class="gg-eval" data-benchmark="{esc(bench)}"><h4>{esc(bench)}</h4><table class="gg-table">'
                   f'<thead><tr><th>metric</th><th>base model</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
                   f'</table>{note}</div>')
    return "".join(out)


def experiment_html(experiment_id: Any) -> str:
    eid = parse_int(experiment_id)
    if eid is None:
        return ""
    from grpo_guard.experiments.stats import t_interval
    from grpo_guard.store import queries

    try:
        members = queries.experiment_runs(eid)
    except LookupError:
        return ""
    arms: dict[str, list[int]] = {}
    for m in members:
        arms.setdefault(m.arm, []).append(m.run.id)
    by_bench = latest_by_run([m.run.id for m in members])
    if not by_bench:
        return ('<div class="gg-muted" id="exp-evals-empty">No benchmark evaluations of this experiment\'s runs '
                'yet.</div>')
    out = []
    for bench, runs in by_bench.items():
        metrics = _metrics(bench, list(runs.values()))
        head = "".join(f"<th>{esc(a)}</th>" for a in arms)
        body = []
        for m in metrics:
            cells = []
            for a, rids in arms.items():
                vals = [runs[r].metrics[m] for r in rids if r in runs and m in runs[r].metrics]
                est = t_interval(vals)
                cells.append(f'<td data-arm="{esc(a)}" data-metric="{esc(m)}">{esc(est.fmt())} '
                             f'<span class="gg-muted">(n={len(vals)})</span></td>')
            body.append(f'<tr><td>{esc(m)}</td>{"".join(cells)}</tr>')
        out.append(f'<div class="gg-eval" data-benchmark="{esc(bench)}"><h4>{esc(bench)}: mean ± 95 % CI over '
                   f'seeds (each run\'s latest evaluated checkpoint)</h4><table class="gg-table"><thead><tr>'
                   f'<th>metric</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    return "".join(out)


def compare_box(runs_pick: Any) -> None:
    """Compare's benchmark table, redrawn when the selection changes."""
    gr.Markdown("### Benchmark evaluations")
    box = gr.HTML("", elem_id="compare-evaluations")
    runs_pick.change(compare_html, runs_pick, box, api_visibility="private", show_progress="hidden")


def experiment_box(exp_state: Any) -> None:
    """Experiments' per-arm benchmark table, redrawn when another experiment is picked."""
    box = gr.HTML("", elem_id="exp-evaluations")
    exp_state.change(experiment_html, exp_state, box, api_visibility="private", show_progress="hidden")

"""The Run page's benchmark evaluations: an **Evaluate…** box on the checkpoints tab (queues
``worker.tasks.evaluate_model`` through ``worker.submit.submit_evaluation``; nothing runs in the
request thread), an Evaluations tab with one paper-style table per benchmark (base model, each
evaluated checkpoint, relative to base), and a banner when the run's training and eval prompts
share prompts. Torch-free: requests are checked by :mod:`grpo_guard.evaluation.request`."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from app.common import esc, parse_int

STEP_CHOICES = ["best", "last"]


def _fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def evaluations_html(run_id: int | None) -> str:
    """One table per benchmark: the run's evaluated steps as columns beside the base model, each
    metric's value and, for checkpoints, the value relative to the base (base = 1.00)."""
    if run_id is None:
        return '<div class="gg-muted">Pick a run.</div>'
    from grpo_guard.evaluation.benchmarks import BENCHMARKS
    from grpo_guard.store import evaluations as store

    rows = store.evaluations_of([run_id])
    if not rows:
        return ('<div class="gg-muted" id="run-evals-empty">No benchmark evaluations yet: use Evaluate… on the '
                'Checkpoints tab or <code>grpo-guard eval --run ID</code>.</div>')
    out = []
    for name in dict.fromkeys(r.benchmark for r in rows):
        bench = BENCHMARKS.get(name)
        mine = [r for r in rows if r.benchmark == name]
        pending = [r for r in mine if r.status in ("queued", "running")]
        failed = [r for r in mine if r.status == "failed"]
        done = [r for r in mine if r.status == "succeeded"]
        parts = [f'<h4>{esc(name)}</h4>']
        for r in pending:
            parts.append(f'<div class="gg-muted gg-eval-pending">Evaluation #{r.id} of step {r.model.step}: '
                         f'{esc(r.status)}…</div>')
        for r in failed:
            parts.append(f'<div class="gg-warn">Evaluation #{r.id} of step {r.model.step} failed: {esc(r.error)}</div>')
        if done:
            parts.append(_table(bench, done))
        out.append(f'<div class="gg-eval" data-benchmark="{esc(name)}">{"".join(parts)}</div>')
    return "".join(out)


def _table(bench: Any, done: list[Any]) -> str:
    from grpo_guard.evaluation.request import base_key
    from grpo_guard.store import evaluations as store

    # the base result under the latest evaluation's protocol (computed once, reused by every step)
    first = done[-1]
    base = store.find_result(base_key(first.protocol.get("_request", {}).get("config", {})), first.benchmark,
                             first.protocol_hash)
    tags = sorted({m for r in done for m in r.metrics})
    metrics = bench.metric_names(tags) if bench is not None else tags
    metrics += [m for m in tags if m not in metrics]  # a request's own (preference: the config's gold)
    metrics = [m for m in metrics if any(m in r.metrics for r in done)]
    head = "".join(f'<th>step {r.model.step} <span class="gg-muted">#{r.id}</span></th>' for r in done)
    body = []
    for m in metrics:
        b = base.metrics.get(m) if base else None
        cells = []
        for r in done:
            v = r.metrics.get(m)
            rel = (f' <span class="gg-muted">({v / b:.2f}×)</span>'
                   if v is not None and b not in (None, 0) and math.isfinite(v) and math.isfinite(b) else "")
            cells.append(f'<td data-metric="{esc(m)}" data-eval="{r.id}" data-value="{v}">{_fmt(v)}{rel}</td>')
        body.append(f'<tr><td>{esc(m)}</td><td data-metric="{esc(m)}" data-eval="base">{_fmt(b)}</td>'
                    f'{"".join(cells)}</tr>')
    proto = first.protocol
    note = (f'{proto.get("images_per_prompt")} images per prompt, {proto.get("num_prompts")} prompts '
            f'({esc(proto.get("prompts"))})' + (f', detector {proto["detector_scale"]}' if "detector_scale" in proto
                                                 else ""))
    return (f'<table class="gg-table gg-eval-table"><thead><tr><th>metric</th><th>base model</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table><div class="gg-muted">{note}; relative to base in brackets '
            f'(base = 1.00).</div>')


def overlap_html(run_id: int | None) -> str:
    """A warning when the run's training and eval prompts share prompts (else empty)."""
    if run_id is None:
        return ""
    from grpo_guard.config import RunConfig
    from grpo_guard.store import queries

    try:
        config = RunConfig.from_dict(queries.get_run(run_id).config)
    except Exception:  # noqa: BLE001 - an unreadable config is shown on the Config tab
        return ""
    warning = config.prompt_overlap_warning()
    return f'<div class="gg-warn" id="run-prompt-overlap">{esc(warning)}</div>' if warning else ""


def queue_evaluation(run_id: int | None, benchmark: str, step: str, images_per_prompt: Any) -> str:
    """Check the request, store a queued evaluation and send it to a worker; one sentence back."""
    if run_id is None:
        return '<div class="gg-warn">Pick a run first.</div>'
    from grpo_guard.evaluation.request import build_request
    from worker.submit import submit_evaluation

    try:
        request = build_request(benchmark, run_id=int(run_id), step=str(step or "best").strip(),
                                images_per_prompt=parse_int(images_per_prompt))
    except ValueError as e:
        return f'<div class="gg-warn" id="run-eval-message">{esc(e)}</div>'
    done = submit_evaluation(request)
    warn = "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.warnings)
    return (f'<div class="gg-ok" id="run-eval-message" data-evaluation-id="{done.ids[0]}">Evaluation '
            f'#{done.ids[0]} of step {request.model.step} on {esc(benchmark)} is queued; its table appears on the '
            f'Evaluations tab.</div>{warn}')


def evaluate_box(rid_state: gr.State) -> None:
    """The Evaluate… controls (inside the checkpoints tab)."""
    from grpo_guard.evaluation.benchmarks import BENCHMARKS

    with gr.Accordion("Evaluate…", open=False, elem_id="run-evaluate"):
        with gr.Row():
            bench = gr.Dropdown(choices=list(BENCHMARKS), value="geneval", label="Benchmark", scale=2,
                                elem_id="run-eval-benchmark")
            step = gr.Dropdown(choices=STEP_CHOICES, value="best", allow_custom_value=True,
                               label="Checkpoint step (best, last or a number)", scale=2, elem_id="run-eval-step")
            ipp = gr.Textbox(value="", label="Images per prompt (blank: the benchmark's)", scale=1,
                             elem_id="run-eval-ipp")
            go = gr.Button("Evaluate", variant="primary", scale=0, min_width=120, elem_id="run-eval-go")
        msg = gr.HTML("", elem_id="run-eval-message-box")
    go.click(queue_evaluation, [rid_state, bench, step, ipp], msg, api_name="run_evaluate")


def evaluations_tab(rid_state: gr.State) -> None:
    """The Evaluations tab: refreshed every 3 s while shown and when the run changes."""
    box = gr.HTML(evaluations_html(None), elem_id="run-evaluations")
    timer = gr.Timer(3.0)
    rid_state.change(evaluations_html, rid_state, box, api_visibility="private", show_progress="hidden")
    timer.tick(evaluations_html, rid_state, box, api_visibility="private", show_progress="hidden",
               concurrency_limit=None, trigger_mode="always_last")


def overlap_banner(rid_state: gr.State) -> None:
    banner = gr.HTML("", elem_id="run-overlap-box")
    rid_state.change(overlap_html, rid_state, banner, api_visibility="private", show_progress="hidden")

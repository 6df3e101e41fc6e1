"""Run page, Checkpoints tab: **Export…** — a run's checkpoint as a diffusers LoRA or pipeline
with a model card, built in the background (``grpo_guard.export.jobs``: ``grpo-guard export`` in
a subprocess watched by a thread of this process, never in the request thread; the app imports
no torch) into the artifact store, its progress shown, the finished folder offered as one zip
(served from the artifact root like every artifact, behind the app's login).

``export_panel(rid_state)`` builds the panel inside the current Blocks context; ``run_detail``
calls it in its Checkpoints tab.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from app.common import esc, parse_int

FORMATS = [("auto (LoRA for a LoRA run, else pipeline)", "auto"), ("LoRA (pytorch_lora_weights.safetensors)", "lora"),
           ("pipeline (complete, LoRA merged)", "pipeline")]
WEIGHTS = [("auto (EMA when the run kept one)", "auto"), ("EMA", "ema"), ("raw", "raw")]
_STATUS = {"running": ("#1d4ed8", "#dbeafe"), "done": ("#15803d", "#dcfce7"), "failed": ("#b91c1c", "#fee2e2"),
           "interrupted": ("#92400e", "#fef3c7")}


def _jobs():
    from grpo_guard.export import jobs

    return jobs


def jobs_html(jobs: list[Any]) -> str:
    """The run's export jobs as a small table: when, what, status, progress or error."""
    if not jobs:
        return '<div class="gg-muted">No export yet.</div>'
    rows = []
    for j in jobs:
        fg, bg = _STATUS.get(j.status, ("#374151", "#f3f4f6"))
        detail = (j.error if j.status in ("failed", "interrupted") and j.error else
                  "the export process is gone (the app restarted?); start it again" if j.status == "interrupted" else
                  "ready: download the zip below" if j.status == "done" else j.progress)
        rows.append(f"<tr><td>{esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(j.started_at)))}</td>"
                    f"<td>{esc(j.step)}</td><td>{esc(j.format)}</td><td>{esc(j.weights)}</td>"
                    f'<td><span class="gg-badge" style="color:{fg};background:{bg}">{esc(j.status)}</span></td>'
                    f"<td>{esc(detail)}</td></tr>")
    return ('<table class="gg-export-jobs"><thead><tr><th>started</th><th>step</th><th>format</th><th>weights</th>'
            "<th>status</th><th>progress</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def job_files(jobs: list[Any]) -> list[str]:
    return [j.zip_path for j in jobs if j.status == "done" and j.zip_path]


def refresh(rid: Any, seen: Any) -> tuple[Any, Any, Any]:
    """Jobs table, zip downloads and the new signature; each skipped when it did not change.

    The downloads are resent only when the set of zips changes: Gradio hashes (and copies into
    its cache) every file it is handed, and a pipeline zip of a large model is tens of GB, so
    resending them at each progress line of another export would reread them every 2 s."""
    run_id = parse_int(rid)
    if run_id is None:
        return '<div class="gg-muted">Pick a run.</div>', None, None
    jobs = _jobs().list_exports(run_id)
    files = job_files(jobs)
    sig = [[run_id, *[[j.name, j.status, j.progress] for j in jobs]], [run_id, *files]]
    old = seen if isinstance(seen, list) and len(seen) == 2 else [None, None]
    table = gr.skip() if sig[0] == old[0] else jobs_html(jobs)
    downloads = gr.skip() if sig[1] == old[1] else (files or None)
    return table, downloads, sig


def start(rid: Any, fmt: str, weights: str, step: str) -> str:
    """Start an export job; the message says what was started or, in one sentence, why not."""
    run_id = parse_int(rid)
    if run_id is None:
        return '<div class="gg-error">Pick a run first.</div>'
    jobs = _jobs()
    try:
        job = jobs.start_export(run_id, step=(step or "best").strip(), weights=weights or "auto",
                                fmt=None if fmt in (None, "", "auto") else fmt)
    except jobs.ExportError as e:
        return f'<div class="gg-error">{esc(e)}</div>'
    except OSError as e:
        return f'<div class="gg-error">{esc(e)}</div>'
    if job.status == "failed":
        return f'<div class="gg-error">{esc(job.error)}</div>'
    return (f'<div class="gg-ok">Exporting run #{run_id} (step {esc(job.step)}) in the background; the zip '
            "appears below when it is done.</div>")


def export_panel(rid_state: gr.State) -> None:
    """The Export… panel and its events (inside the caller's Blocks context)."""
    with gr.Accordion("Export…", open=False, elem_id="run-export"):
        gr.Markdown("A checkpoint as a diffusers LoRA or a complete pipeline, with a model card "
                    "(`grpo-guard export` does the same from the command line).")
        with gr.Row():
            fmt = gr.Dropdown(choices=FORMATS, value="auto", label="Format", elem_id="run-export-format")
            weights = gr.Dropdown(choices=WEIGHTS, value="auto", label="Weights", elem_id="run-export-weights")
            step = gr.Textbox(value="best", label="Step (best, last or an epoch)", elem_id="run-export-step")
            go = gr.Button("Export", variant="primary", scale=0, min_width=110, elem_id="run-export-start")
        message = gr.HTML("", elem_id="run-export-message")
        table = gr.HTML("", elem_id="run-export-jobs")
        files = gr.File(label="Finished exports (zip)", file_count="multiple", interactive=False,
                        elem_id="run-export-files")
    seen = gr.State(None)
    timer = gr.Timer(2.0)
    go.click(start, [rid_state, fmt, weights, step], message, api_visibility="private").then(
        refresh, [rid_state, gr.State(None)], [table, files, seen], api_visibility="private")
    timer.tick(refresh, [rid_state, seen], [table, files, seen], api_visibility="private", show_progress="hidden")
    rid_state.change(refresh, [rid_state, gr.State(None)], [table, files, seen], api_visibility="private")

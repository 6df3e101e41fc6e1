"""Runs: the table of runs (filter, sort, live status) and the actions on one run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.common import (
    STATUS_CHOICES,
    alarm_badge,
    esc,
    fmt_float,
    fmt_time,
    parse_int,
    progress_html,
    queries,
    run_onset,
    split_tags,
    status_badge,
    stop_run,
)
from app.run_form import ab_form_configs, after_submit_url, load_preset
from grpo_guard.config import ConfigError
from grpo_guard.store.db import StoreError
from worker.submit import resume, submit_runs

HEADERS = ["id", "name", "algorithm", "backbone", "status", "progress", "proxy", "gold", "tags", "created"]
DATATYPES = ["number", "html", "str", "str", "html", "html", "str", "str", "str", "str"]
TOY_PRESET = "toy GRPO-Guard"
SORTS = {"created": "created_at", "name": "name", "status": "status", "step": "step", "latest proxy": "latest_proxy",
         "latest gold": "latest_gold", "algorithm": "algorithm", "id": "id"}


# ---- data shaping (pure) -------------------------------------------------------------------
def table_rows(runs: Sequence[Any], onsets: dict[int, int | None] | None = None) -> list[list[Any]]:
    """RunSummary rows -> table rows (HTML cells for name, status and progress)."""
    rows = []
    for r in runs:
        onset = (onsets or {}).get(r.id)
        pair = ' <span class="gg-pair" title="A/B pair">A/B</span>' if r.pair_id else ""
        name = f'<a class="gg-link" href="run?run={r.id}" target="_self">{esc(r.name)}</a>{pair} {alarm_badge(onset)}'
        status = status_badge(r.status, stale=r.stale)
        if r.error and r.status == "failed":
            status += f'<div class="gg-small" title="{esc(r.error)}">{esc(r.error[:60])}</div>'
        rows.append([r.id, name, r.algorithm, r.backbone, status, progress_html(r.step, r.total, r.status, r.eta_seconds),
                     fmt_float(r.latest_proxy), fmt_float(r.latest_gold), ", ".join(r.tags), fmt_time(r.created_at)])
    return rows


def signature(runs: Sequence[Any]) -> tuple:
    """What the table shows, minus the clock: a refresh redraws only when this changes."""
    return tuple((r.id, r.name, r.status, r.step, r.total, r.stale, r.latest_eval_step, r.latest_proxy,
                  r.latest_gold, r.tags, int((r.eta_seconds or 0) // 10)) for r in runs)


def fetch(statuses: list[str] | None, tag: str | None, text: str | None, sort: str, descending: bool) -> list[Any]:
    return queries().list_runs(status=statuses or None, tag=(tag or None), text=(text or None),
                               order_by=SORTS.get(sort, "created_at"), descending=bool(descending))


def all_tags(runs: Sequence[Any]) -> list[str]:
    return sorted({t for r in runs for t in r.tags})


def render(statuses, tag, text, sort, descending) -> tuple[list[list[Any]], tuple, list[str]]:
    runs = fetch(statuses, tag, text, sort, descending)
    onsets = {r.id: run_onset(r.id, r.latest_eval_step) for r in runs}
    return table_rows(runs, onsets), signature(runs), all_tags(runs)


def empty_note(n_rows: int, statuses: list[str] | None, tag: str | None, text: str | None) -> str:
    """What stands in for the table when it has no rows ('' when it has some): with filters set,
    that nothing matches them; on an empty store, what to do first."""
    if n_rows:
        return ""
    if statuses or tag or text:
        return '<div class="gg-muted" id="runs-none-match">No run matches these filters.</div>'
    return ('<div class="gg-empty" id="runs-empty-note"><b>No runs yet.</b> Start the toy A/B pair below: '
            "Flow-GRPO and GRPO-Guard on the shipped 32-pixel toy model (examples/toy_grpo_guard.yaml), trained "
            "side by side by this server's workers; their first points appear on the Compare page within about "
            "a minute. Or set up your own run with <b>+ New run</b>.</div>")


def start_toy_pair() -> tuple[str, str]:
    """Enqueue the "toy GRPO-Guard" preset as an A/B pair, as the New-run page's A/B box does:
    (message HTML, the page to go to: the pair's Compare page, or '' to stay and read a problem)."""
    configs, errors = ab_form_configs(load_preset(TOY_PRESET))
    if errors:
        return f'<div class="gg-error">The toy preset is not valid here: {esc("; ".join(errors.values()))}</div>', ""
    try:
        done = submit_runs(configs, name="toy A/B", tags=["toy"])
    except (ConfigError, ValueError, LookupError, StoreError) as e:  # StoreError: e.g. the database's disk is full
        return f'<div class="gg-error">Nothing was enqueued: {esc(e)}</div>', ""
    ids = list(done.ids)
    msg = f'<div class="gg-ok">Queued the toy A/B pair: runs {" and ".join(f"#{i}" for i in ids)}.</div>'
    if done.warnings:  # queued but not sent: stay here so the warning is read
        return msg + "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.warnings), ""
    return msg, after_submit_url(ids)


def _selected_html(run: Any | None) -> str:
    if run is None:
        return '<div class="gg-muted">Click a row to select a run.</div>'
    onset = run_onset(run.id, run.last_eval_step)
    return (f'<div class="gg-selected"><b>#{run.id} {esc(run.name)}</b> {status_badge(run.status)} {alarm_badge(onset)}'
            f' <span class="gg-muted">{esc(run.algorithm)} · {esc(run.backbone)} · step {run.step}/{run.total}'
            f'{" · attempt " + str(run.attempt) if run.attempt > 1 else ""}</span></div>')


# ---- the page ------------------------------------------------------------------------------
with gr.Blocks(title="Runs") as page:
    sig_state = gr.State(None)
    with gr.Row(equal_height=True):
        gr.Markdown("## Runs", elem_id="runs-title")
        gr.Button("+ New run", link="new", variant="primary", scale=0, min_width=140, elem_id="goto-new")
        gr.Button("Compare", link="compare", scale=0, min_width=120, elem_id="goto-compare")
    with gr.Row(equal_height=True):
        f_status = gr.Dropdown(choices=list(STATUS_CHOICES), multiselect=True, value=[], label="Status", scale=2,
                               elem_id="filter-status")
        f_tag = gr.Dropdown(choices=[], value=None, label="Tag", allow_custom_value=True, scale=1, elem_id="filter-tag")
        f_text = gr.Textbox(label="Search", placeholder="name, notes, algorithm, backbone or id", scale=2,
                            elem_id="filter-text")
        f_sort = gr.Dropdown(choices=list(SORTS), value="created", label="Sort by", scale=1, elem_id="sort-by")
        f_desc = gr.Checkbox(value=True, label="Descending", scale=0, min_width=120)
        live = gr.Checkbox(value=True, label="Live", scale=0, min_width=90, elem_id="runs-live")
    with gr.Column(visible=False, elem_id="runs-empty") as empty_box:
        empty_html = gr.HTML("")
        b_toy = gr.Button("▶ Start the toy A/B pair", variant="primary", scale=0, min_width=240, elem_id="start-toy-pair")
    goto = gr.Textbox(visible=False, elem_id="runs-goto")
    table = gr.Dataframe(headers=HEADERS, datatype=DATATYPES, value=[], interactive=False, wrap=True,
                         elem_id="runs-table", max_height=560, column_widths=["5%", "22%", "10%", "7%", "11%", "17%",
                                                                              "7%", "7%", "7%", "7%"])
    # a Column, not a Group: in a Group the buttons lose their borders and gaps and read as table cells
    with gr.Column(elem_id="run-actions", visible=False) as actions:  # shown once there is a row to click
        with gr.Row(equal_height=True):
            selected = gr.Textbox(label="Selected run", value="", placeholder="click a row", scale=0, min_width=140,
                                  elem_id="selected-run")
            selected_info = gr.HTML(_selected_html(None), elem_id="selected-info")
        with gr.Column(visible=False, elem_id="run-actions-body") as actions_body:  # shown once a run is selected
            with gr.Row(elem_id="run-action-buttons"):
                b_open = gr.Button("Open", size="sm", scale=0, min_width=90, elem_id="act-open")
                b_stop = gr.Button("Stop", size="sm", variant="stop", scale=0, min_width=90, elem_id="act-stop")
                b_resume = gr.Button("Resume", size="sm", scale=0, min_width=90, elem_id="act-resume")
                b_clone = gr.Button("Clone…", size="sm", scale=0, min_width=90, elem_id="act-clone")
                b_compare = gr.Button("Compare with pair", size="sm", scale=0, min_width=150, elem_id="act-compare")
                b_delete = gr.Button("Delete…", size="sm", variant="stop", scale=0, min_width=90, elem_id="act-delete")
            with gr.Row(visible=False, elem_id="confirm-delete") as confirm_row:
                confirm_text = gr.Markdown("")
                b_confirm = gr.Button("Yes, delete it and its artifacts", variant="stop", size="sm",
                                      elem_id="act-delete-confirm")
                b_cancel = gr.Button("Cancel", size="sm", elem_id="act-delete-cancel")
            with gr.Row():
                e_tags = gr.Textbox(label="Tags", placeholder="comma-separated", scale=1, elem_id="edit-tags")
                e_notes = gr.Textbox(label="Notes", lines=2, scale=2, elem_id="edit-notes")
                b_save = gr.Button("Save tags & notes", size="sm", scale=0, min_width=160, elem_id="act-save-meta")
        message = gr.HTML("", elem_id="runs-message")
    timer = gr.Timer(2.0)
    filters = [f_status, f_tag, f_text, f_sort, f_desc]

    # -- table --
    def redraw(statuses, tag, text, sort, descending):
        rows, new_sig, tags = render(statuses, tag, text, sort, descending)
        note = empty_note(len(rows), statuses, tag, text)
        return (gr.Dataframe(value=rows, visible=bool(rows)), new_sig, gr.Dropdown(choices=tags),
                gr.Column(visible=bool(note)), note, gr.Button(visible=bool(note) and not (statuses or tag or text)),
                gr.Column(visible=bool(rows)))

    def refresh(statuses, tag, text, sort, descending, sig):
        out = redraw(statuses, tag, text, sort, descending)
        if out[1] == sig:
            return (gr.skip(), sig, *[gr.skip()] * 5)
        return out

    table_outputs = [table, sig_state, f_tag, empty_box, empty_html, b_toy, actions]
    page.load(redraw, filters, table_outputs, api_visibility="private")
    for comp in filters:
        comp.change(redraw, filters, table_outputs, api_visibility="private", show_progress="hidden",
                    trigger_mode="always_last")
    timer.tick(refresh, [*filters, sig_state], table_outputs, api_visibility="private",
               show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
    live.change(lambda on: gr.Timer(active=bool(on)), live, timer, api_visibility="private")

    # -- selection --
    def on_select(evt: gr.SelectData):
        row = evt.row_value or []
        return str(parse_int(row[0]) or "") if row else ""

    table.select(on_select, None, selected, api_visibility="private")

    def on_selected(rid):
        rid = parse_int(rid)
        if rid is None:
            return _selected_html(None), "", "", gr.Row(visible=False), gr.Column(visible=False)
        try:
            run = queries().get_run(rid)
        except LookupError:
            return f'<div class="gg-error">No run #{rid}.</div>', "", "", gr.Row(visible=False), gr.Column(visible=False)
        return _selected_html(run), ", ".join(run.tags), run.notes, gr.Row(visible=False), gr.Column(visible=True)

    selected.change(on_selected, selected, [selected_info, e_tags, e_notes, confirm_row, actions_body],
                    api_visibility="private")

    def _need(rid) -> int:
        rid = parse_int(rid)
        if rid is None:
            raise gr.Error("Select a run first (click a row).")
        return rid

    # -- actions (each writes the store and returns at once) --
    def on_stop(rid):
        return stop_run(_need(rid))

    redraw_args = dict(fn=redraw, inputs=filters, outputs=table_outputs, api_visibility="private",
                       show_progress="hidden")
    b_stop.click(on_stop, selected, message, api_name="stop_run").then(**redraw_args)

    def on_resume(rid):
        rid = _need(rid)
        try:
            done = resume(rid)
        except Exception as e:
            return f'<div class="gg-error">{esc(e)}</div>'
        msg = f'<div class="gg-ok">Run #{rid} is queued again; it resumes from its last checkpoint.</div>'
        return msg + "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.warnings)

    b_resume.click(on_resume, selected, message, api_name="resume_run").then(**redraw_args)

    b_open.click(None, selected, None, js="(id) => { if (id !== null && id !== '') window.location.assign('run?run=' + id); }")
    b_clone.click(None, selected, None, js="(id) => { if (id !== null && id !== '') window.location.assign('new?clone=' + id); }")

    def compare_ids(rid) -> str:
        rid = _need(rid)
        q = queries()
        run = q.get_run(rid)
        ids = [rid]
        if run.pair_id:
            ids = q.pair_of(rid)
        elif run.parent_id:
            ids = [run.parent_id, rid]
        return ",".join(map(str, ids))

    compare_target = gr.Textbox(visible=False)
    b_compare.click(compare_ids, selected, compare_target, api_visibility="private").then(
        None, compare_target, None, js="(ids) => { if (ids) window.location.assign('compare?runs=' + ids); }")

    def on_delete(rid):
        rid = _need(rid)
        run = queries().get_run(rid)
        if run.status in ("running", "stopping"):
            return gr.Row(visible=False), "", f'<div class="gg-error">Run #{rid} is {run.status}: stop it and let it end first.</div>'
        return (gr.Row(visible=True), f"Delete run **#{rid} {run.name}**, its metrics, samples, checkpoints and files? "
                "This cannot be undone.", "")

    b_delete.click(on_delete, selected, [confirm_row, confirm_text, message], api_visibility="private")
    b_cancel.click(lambda: gr.Row(visible=False), None, confirm_row, api_visibility="private")

    def on_confirm(rid):
        rid = _need(rid)
        try:
            queries().delete_run(rid)
        except Exception as e:
            return gr.Row(visible=False), f'<div class="gg-error">{esc(e)}</div>', str(rid)
        return gr.Row(visible=False), f'<div class="gg-ok">Deleted run #{rid} and its artifacts.</div>', ""

    b_confirm.click(on_confirm, selected, [confirm_row, message, selected], api_name="delete_run").then(**redraw_args)

    def on_save(rid, tags, notes):
        rid = _need(rid)
        q = queries()
        try:
            saved = q.set_tags(rid, split_tags(tags))
            q.set_notes(rid, notes or "")
        except (ValueError, LookupError) as e:
            return f'<div class="gg-error">{esc(e)}</div>'
        return f'<div class="gg-ok">Saved tags ({esc(", ".join(saved)) or "none"}) and notes of run #{rid}.</div>'

    b_save.click(on_save, [selected, e_tags, e_notes], message, api_name="save_run_meta").then(**redraw_args)

    b_toy.click(start_toy_pair, None, [message, goto], api_name="start_toy_pair").then(**redraw_args).then(
        None, goto, None, js="(url) => { if (url) window.location.assign(url); }")

"""Experiments: the list (progress across each experiment's runs) and one experiment's view —
proxy and gold per arm as mean ± 95 % bands over seeds, gold against proxy with the interval,
gold at equal proxy, gold lost beyond noise (arm − its control), per-arm ratio statistics side by
side, the alarm per run, links to every run and to Compare; stop / resume act on all its runs.

Deep link: ``experiments?experiment=ID``. The statistics are :mod:`grpo_guard.experiments.stats`
(the report's), read from the store by :func:`grpo_guard.experiments.report.load_curves`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.common import esc, fmt_float, fmt_time, parse_int, progress_html, queries, status_badge
from app.figures import experiment as FE
from app.pages import evaluation_tables
from app.pages.judge import experiment_hook  # human gold (issue #22): Judge link and per-arm human series

LIST_HEADERS = ["id", "name", "status", "runs", "progress", "arms", "seeds", "created"]
LIST_TYPES = ["number", "html", "html", "number", "html", "str", "str", "str"]
PLOTS = ("proxy", "gold", "gold_proxy", "beyond", "ratio")


# ---- data shaping (pure) -------------------------------------------------------------------
def list_rows(exps: Sequence[Any]) -> list[list[Any]]:
    """ExperimentRow -> list-table rows (name links to the experiment's view)."""
    rows = []
    for e in exps:
        cfg = e.config or {}
        arms = ", ".join(cfg.get("arms", {})) + (" (+ controls)" if cfg.get("controls") else "")
        name = f'<a class="gg-link" href="experiments?experiment={e.id}" target="_self">{esc(e.name)}</a>'
        rows.append([e.id, name, status_badge(e.status if e.status != "empty" else "queued"), e.runs,
                     progress_html(e.step, e.total, e.status, None), arms,
                     " ".join(str(s) for s in cfg.get("seeds", [])), fmt_time(e.created_at)])
    return rows


def cursor_of(experiment_id: int | None) -> tuple | None:
    """What the view shows, cheaply: each run's status, step and latest eval step."""
    if experiment_id is None:
        return None
    try:
        members = queries().experiment_runs(experiment_id)
    except LookupError:
        return None
    return (experiment_id, tuple((m.run.id, m.run.status, m.run.step, m.run.latest_eval_step) for m in members))


def header_html(exp: Any, members: Sequence[Any]) -> str:
    """Name, status, progress, arms and seeds, and links to Compare (the arms of each seed)."""
    cfg = exp.config or {}
    by_seed: dict[int, list[int]] = {}
    for m in members:
        by_seed.setdefault(m.seed, []).append(m.run.id)
    compare = " · ".join(f'<a href="compare?runs={",".join(map(str, ids))}" target="_self">compare seed {s}</a>'
                         for s, ids in sorted(by_seed.items()))
    controls = " with matched no-signal controls" if cfg.get("controls") else " (no controls: the alarm cannot tell " \
                                                                                "noise from over-optimisation)"
    return (f'<div class="gg-selected" id="exp-title" data-experiment-id="{exp.id}"><b>Experiment #{exp.id} '
            f'{esc(exp.name)}</b> {status_badge(exp.status if exp.status != "empty" else "queued")} '
            f'{progress_html(exp.step, exp.total, exp.status, None)}'
            f'<div class="gg-muted">arms {esc(", ".join(cfg.get("arms", {})))}{esc(controls)}; seeds '
            f'{esc(" ".join(str(s) for s in cfg.get("seeds", [])))}</div><div>{compare}</div></div>')


def runs_html(members: Sequence[Any], stats: Any) -> str:
    """Every run: arm, seed, link, status, latest proxy and gold, and its alarm with the
    reference it used."""
    alarm = {r.run_id: v for a, vs in stats.alarms.items() for r, v in zip(stats.runs[a], vs, strict=True)}
    rows = []
    for m in members:
        r = m.run
        v = alarm.get(r.id)
        note = "" if v is None else (f'{"⚠ step " + str(v.onset) if v.onset is not None else "—"} '
                                     f'<span class="gg-muted">({esc(v.method)}: {esc(v.note)})</span>')
        rows.append(f'<tr><td>{esc(m.arm)}</td><td>{m.seed}</td><td><a href="run?run={r.id}" target="_self">'
                    f'#{r.id}</a></td><td>{status_badge(r.status, stale=r.stale)}</td><td>{r.step}/{r.total}</td>'
                    f'<td>{fmt_float(r.latest_proxy)}</td><td>{fmt_float(r.latest_gold)}</td><td>{note}</td></tr>')
    return ('<table class="gg-table" id="exp-runs-table"><tr><th>arm</th><th>seed</th><th>run</th><th>status</th>'
            '<th>step</th><th>proxy</th><th>gold</th><th>over-optimisation alarm</th></tr>' + "".join(rows) + "</table>")


def tables_html(stats: Any) -> str:
    """Gold at equal proxy per arm, and gold lost beyond noise at equal proxy, as tables."""
    if not stats.levels:
        eq = '<p class="gg-muted">Gold at equal proxy: no proxy level is reached by every run of every arm yet.</p>'
    else:
        mains = list(stats.gold_at_proxy)
        head = "".join(f"<th>{esc(a)}</th>" for a in mains)
        body = "".join(f"<tr><td>{lv:.4f}</td>" + "".join(f"<td>{esc(stats.gold_at_proxy[a][i].fmt())}</td>"
                                                         for a in mains) + "</tr>" for i, lv in enumerate(stats.levels))
        eq = (f'<h4>Gold at equal proxy (mean ± 95 % interval over seeds)</h4><table class="gg-table" '
              f'id="exp-equal-proxy"><tr><th>proxy level</th>{head}</tr>{body}</table>')
    if not stats.beyond_proxy or not stats.levels:
        return eq
    arms = list(stats.beyond_proxy)
    head = "".join(f"<th>{esc(a)} − control</th>" for a in arms)
    body = "".join(f"<tr><td>{lv:.4f}</td>" + "".join(f"<td>{esc(stats.beyond_proxy[a][i].fmt())}</td>" for a in arms)
                   + "</tr>" for i, lv in enumerate(stats.levels))
    return (eq + f'<h4>Gold lost beyond noise at equal proxy (where the control reaches the level)</h4>'
            f'<table class="gg-table" id="exp-beyond-proxy"><tr><th>proxy level</th>{head}</tr>{body}</table>')


def render(experiment_id: int) -> tuple[Any, ...]:
    """(header, five figures, tables, runs) of one experiment."""
    from grpo_guard.experiments.report import load_curves
    from grpo_guard.experiments.stats import experiment_stats

    q = queries()
    exp = q.get_experiment(experiment_id)
    members = q.experiment_runs(experiment_id)
    stats = experiment_stats(load_curves(experiment_id))
    rev = f"exp-{experiment_id}"
    figs = (FE.bands_figure(stats, "proxy", uirevision=rev + "-proxy"), FE.bands_figure(stats, "gold", uirevision=rev + "-gold"),
            FE.gold_vs_proxy_figure(stats, uirevision=rev + "-gp"), FE.beyond_noise_figure(stats, uirevision=rev + "-bn"),
            FE.ratio_figure(stats, uirevision=rev + "-ratio"))
    return header_html(exp, members), *figs, tables_html(stats), runs_html(members, stats)


# ---- the page ------------------------------------------------------------------------------
with gr.Blocks(title="Experiments") as page:
    exp_state = gr.State(None)
    cursor = gr.State(None)
    with gr.Row(equal_height=True):
        gr.Markdown("## Experiments", elem_id="experiments-title")
        gr.Button("+ New experiment", link="new", scale=0, min_width=160, elem_id="goto-new-experiment")
        live = gr.Checkbox(value=True, label="Live", scale=0, min_width=90, elem_id="experiments-live")
    table = gr.Dataframe(headers=LIST_HEADERS, datatype=LIST_TYPES, value=[], interactive=False, wrap=True,
                         elem_id="experiments-table", max_height=300)
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(choices=[], value=None, label="Experiment", scale=3, elem_id="experiment-pick")
        b_stop = gr.Button("Stop all runs", variant="stop", size="sm", scale=0, min_width=140, elem_id="exp-stop")
        b_resume = gr.Button("Resume failed / cancelled", size="sm", scale=0, min_width=200, elem_id="exp-resume")
        b_report = gr.Button("Report", size="sm", scale=0, min_width=100, elem_id="exp-report")
        judge_btn = gr.Button("Judge", link="judgments", size="sm", scale=0, min_width=100, elem_id="exp-judge")  # issue #22
    report_files = gr.File(label="Report (table.md, figure.png, stats.json)", file_count="multiple", interactive=False,
                           visible=False, elem_id="exp-report-files")
    message = gr.HTML("", elem_id="exp-message")
    header = gr.HTML("", elem_id="exp-header")
    with gr.Row():
        p_proxy = gr.Plot(elem_id="exp-plot-proxy", show_label=False)
        p_gold = gr.Plot(elem_id="exp-plot-gold", show_label=False)
        p_human = gr.Plot(elem_id="exp-plot-human", show_label=False)  # human gold per arm (app/pages/judge.py)
    with gr.Row():
        p_gp = gr.Plot(elem_id="exp-plot-gold-proxy", show_label=False)
        p_beyond = gr.Plot(elem_id="exp-plot-beyond", show_label=False)
    tables = gr.HTML("", elem_id="exp-tables")
    p_ratio = gr.Plot(elem_id="exp-plot-ratio", show_label=False)
    runs = gr.HTML("", elem_id="exp-runs")
    evaluation_tables.experiment_box(exp_state)
    timer = gr.Timer(3.0)
    view = [header, p_proxy, p_gold, p_gp, p_beyond, p_ratio, tables, runs]

    def draw(eid, cur):
        eid = parse_int(eid)
        if eid is None:
            return ['<div class="gg-muted">No experiment yet: submit one from New run ("run as experiment") or '
                    "<code>grpo-guard experiment submit EXP.yaml</code>.</div>", *[gr.skip()] * (len(view) - 1)]
        try:
            h, f1, f2, f3, f4, f5, t, r = render(eid)
        except LookupError:
            return [f'<div class="gg-error">No experiment #{eid}.</div>', *[gr.skip()] * (len(view) - 1)]
        return [h, f1, f2, f3, f4, f5, t, r]

    def listing():
        exps = queries().list_experiments()
        return list_rows(exps), [(f"#{e.id} {e.name}", e.id) for e in exps]

    def on_load(request: gr.Request):
        rows, choices = listing()
        want = parse_int((dict(request.query_params) if request else {}).get("experiment"))
        if want is None and choices:
            want = choices[0][1]
        return rows, gr.Dropdown(choices=choices, value=want), want, cursor_of(want)

    page.load(on_load, None, [table, pick, exp_state, cursor], api_visibility="private")
    pick.input(lambda e: (parse_int(e), cursor_of(parse_int(e))), pick, [exp_state, cursor], api_visibility="private")
    cursor.change(draw, [exp_state, cursor], view, api_visibility="private", show_progress="hidden",
                  trigger_mode="always_last")

    cursor.change(experiment_hook, exp_state, [judge_btn, p_human], api_visibility="private", show_progress="hidden",
                  trigger_mode="always_last")

    def poll(eid, cur, shown):
        new = cursor_of(parse_int(eid))
        rows, _ = listing()
        return (gr.skip() if new == cur else new), (gr.skip() if rows == shown else rows), rows

    shown_rows = gr.State(None)
    timer.tick(poll, [exp_state, cursor, shown_rows], [cursor, table, shown_rows], api_visibility="private",
               show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")
    live.change(lambda on: gr.Timer(active=bool(on)), live, timer, api_visibility="private")

    def _need(eid) -> int:
        eid = parse_int(eid)
        if eid is None:
            raise gr.Error("Pick an experiment first.")
        return eid

    def on_stop(eid):
        from worker.experiment import stop_experiment

        eid = _need(eid)
        statuses = stop_experiment(eid)
        n = sum(s in ("cancelled", "stopping") for s in statuses.values())
        return f'<div class="gg-ok">Experiment #{eid}: asked {n} active run(s) to stop.</div>'

    def on_resume(eid):
        from worker.experiment import resume_experiment

        eid = _need(eid)
        done = resume_experiment(eid)
        warn = "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.warnings)
        return f'<div class="gg-ok">Experiment #{eid}: queued {len(done.ids)} run(s) again.</div>{warn}'

    def on_report(eid):
        import tempfile

        from grpo_guard.experiments.report import write_report

        eid = _need(eid)
        try:  # what `grpo-guard experiment report ID --out DIR` writes
            files = write_report(eid, tempfile.mkdtemp(prefix=f"gg-experiment-{eid}-"))
        except (ValueError, RuntimeError, OSError) as e:
            return gr.File(visible=False), f'<div class="gg-error">{esc(e)}</div>'
        return gr.File(value=list(files.values()), visible=True), ""

    b_report.click(on_report, exp_state, [report_files, message], api_name="experiment_report")
    b_stop.click(on_stop, exp_state, message, api_name="experiment_stop")
    b_resume.click(on_resume, exp_state, message, api_name="experiment_resume")

__all__ = ["page"]

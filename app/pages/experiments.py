"""Experiments: the list (progress across each experiment's runs) and one experiment's view —
proxy and gold per arm as mean ± 95 % bands over seeds, gold against proxy with the interval,
gold at equal proxy, gold lost beyond noise (arm − its control), per-arm ratio statistics side by
side, the alarm per run, links to every run and to Compare; stop / resume act on all its runs.

Deep link: ``experiments?experiment=ID``. The statistics are :mod:`grpo_guard.experiments.stats`
(the report's), read from the store by :func:`grpo_guard.experiments.report.load_curves`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.common import (
    ema_notice_html,
    esc,
    fmt_float,
    fmt_time,
    parse_int,
    progress_html,
    queries,
    status_badge,
)
from app.figures import experiment as FE
from app.pages import evaluation_tables
from app.pages.judge import experiment_hook  # human gold (issue #22): Judge link and per-arm human series

LIST_HEADERS = ["id", "name", "status", "runs", "progress", "arms", "seeds", "created"]
LIST_TYPES = ["number", "html", "html", "number", "html", "str", "str", "str"]
PLOTS = ("proxy", "gold", "gold_proxy", "beyond", "ratio")
# The one-click example: the toy over-optimisation study's controlled comparison, one seed (in a
# source checkout; the slim Docker image has no benchmarks/ and shows the command instead).
EXAMPLE_STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "benchmarks", "overoptimization", "experiments", "flow_vs_guard.yaml")
EXAMPLE_SEEDS = [0]


def empty_html(example_available: bool) -> str:
    """What an experiment is and how to start one, for a store without experiments."""
    start = ("<b>▶ Start the example study</b> queues the toy over-optimisation study's controlled comparison "
             "(<code>benchmarks/overoptimization/experiments/flow_vs_guard.yaml</code>) with one seed: Flow-GRPO "
             "and GRPO-Guard on the shipped toy model, each with its no-signal control — 4 runs of 40 epochs, "
             "about 20 minutes on a 2-core machine with this server's workers." if example_available else
             "The example study ships with a source checkout: "
             "<code>grpo-guard experiment submit benchmarks/overoptimization/experiments/flow_vs_guard.yaml "
             "--seeds 0</code>.")
    return ('<div class="gg-empty" id="experiments-empty-note"><b>No experiments yet.</b> An experiment is arms × '
            "seeds as one object: a base run config, named arms (each a few overrides, e.g. the algorithm) and "
            "seeds, optionally with a matched no-signal control per arm. This page then shows proxy and gold per "
            "arm as mean ± 95 % bands over the seeds, gold at equal proxy and gold lost beyond noise. "
            f"{start} Or build your own from <b>+ New experiment</b> (\"Run as experiment\") or "
            "<code>grpo-guard experiment submit EXP.yaml</code>.</div>")


def start_example() -> tuple[str, int | None]:
    """Queue the example study (one seed); (message HTML, the new experiment's id or None)."""
    from grpo_guard.experiments.config import ExperimentConfig
    from grpo_guard.store.db import StoreError
    from worker.experiment import submit_experiment

    try:
        done = submit_experiment(ExperimentConfig.from_file(EXAMPLE_STUDY, seeds=EXAMPLE_SEEDS))
    except (ValueError, OSError, StoreError) as e:
        return f'<div class="gg-error">The example study was not queued: {esc(e)}</div>', None
    warn = "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.runs.warnings)
    return (f'<div class="gg-ok">Queued the example study as experiment #{done.experiment_id} '
            f"({len(done.runs.ids)} runs).</div>{warn}"), done.experiment_id


# ---- data shaping (pure) -------------------------------------------------------------------
def list_rows(exps: Sequence[Any]) -> list[list[Any]]:
    """ExperimentRow -> list-table rows (name links to the experiment's view)."""
    rows = []
    for e in exps:
        cfg = e.config or {}
        arms = ", ".join(cfg.get("arms", {})) + (" (+ controls)" if cfg.get("controls") else "")
        name = f'<a class="gg-link" href="experiments?experiment={e.id}" target="_self">{esc(e.name)}</a>'
        rows.append([e.id, name, status_badge(e.status if e.status != "empty" else "queued"), e.runs,
                     progress_html(e.step, e.total, e.status, None), arms, seeds_text(cfg.get("seeds", [])),
                     fmt_time(e.created_at)])
    return rows


def seeds_text(seeds: Sequence[int]) -> str:
    """"1 seed: 0", "3 seeds: 0, 1, 2" (a bare "0" read as "no seeds")."""
    seeds = list(seeds)
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))}" if seeds else "none"


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
            f'<div class="gg-muted">arms {esc(", ".join(cfg.get("arms", {})))}{esc(controls)}; '
            f'{esc(seeds_text(cfg.get("seeds", [])))}</div><div>{compare}</div>{ema_notes_html(members)}</div>')


def ema_notes_html(members: Sequence[Any]) -> str:
    """Per arm, whether its evals still sample the base model (an EMA that has not moved yet)."""
    out, seen = [], set()
    for m in members:
        if m.arm in seen:
            continue
        seen.add(m.arm)
        try:
            config = queries().get_run(m.run.id).config
        except LookupError:
            continue
        steps = [x.run.latest_eval_step for x in members if x.arm == m.arm]
        latest = min((s for s in steps if s is not None), default=None)
        out.append(ema_notice_html(config, latest, prefix=f"{m.arm}: "))
    return "".join(out)


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
    with gr.Column(visible=False, elem_id="experiments-empty") as empty_box:
        gr.HTML(empty_html(os.path.exists(EXAMPLE_STUDY)))
        b_example = gr.Button("▶ Start the example study", variant="primary", scale=0, min_width=240,
                              visible=os.path.exists(EXAMPLE_STUDY), elem_id="start-example-study")
        example_msg = gr.HTML("", elem_id="experiments-example-message")
    table = gr.Dataframe(headers=LIST_HEADERS, datatype=LIST_TYPES, value=[], interactive=False, wrap=True,
                         elem_id="experiments-table", max_height=300)
    with gr.Row(equal_height=True) as pick_row:
        pick = gr.Dropdown(choices=[], value=None, label="Experiment", scale=3, elem_id="experiment-pick")
        b_stop = gr.Button("Stop all runs", variant="stop", size="sm", scale=0, min_width=140, elem_id="exp-stop")
        b_resume = gr.Button("Resume failed / cancelled", size="sm", scale=0, min_width=200, elem_id="exp-resume")
        b_report = gr.Button("Report", size="sm", scale=0, min_width=100, elem_id="exp-report")
        judge_btn = gr.Button("Judge", link="judgments", size="sm", scale=0, min_width=100, elem_id="exp-judge")  # issue #22
    report_files = gr.File(label="Report (table.md, figure.png, stats.json)", file_count="multiple", interactive=False,
                           visible=False, elem_id="exp-report-files")
    message = gr.HTML("", elem_id="exp-message")
    header = gr.HTML("", elem_id="exp-header")
    with gr.Row() as plots_1:
        p_proxy = gr.Plot(elem_id="exp-plot-proxy", show_label=False)
        p_gold = gr.Plot(elem_id="exp-plot-gold", show_label=False)
        p_human = gr.Plot(elem_id="exp-plot-human", show_label=False)  # human gold per arm (app/pages/judge.py)
    with gr.Row() as plots_2:
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

    def show(want: int | None):
        rows, choices = listing()
        if want is None and choices:
            want = choices[0][1]
        # without an experiment: the explanation and the example, not a bare list and four empty frames
        return (rows, gr.Dropdown(choices=choices, value=want), want, cursor_of(want),
                gr.Column(visible=not rows), *[gr.update(visible=bool(rows))] * len(body))

    def on_load(request: gr.Request):
        return show(parse_int((dict(request.query_params) if request else {}).get("experiment")))

    body = [table, pick_row, plots_1, plots_2, p_ratio]
    shown = [table, pick, exp_state, cursor, empty_box, *body]
    page.load(on_load, None, shown, api_visibility="private")

    def on_example():
        msg, eid = start_example()
        return msg, *(show(eid) if eid is not None else [gr.skip()] * len(shown))

    b_example.click(on_example, None, [example_msg, *shown], api_name="experiment_example", concurrency_limit=1)
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

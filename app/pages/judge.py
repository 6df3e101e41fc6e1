"""Judge (``/judgments``): create a blind A/B judging session (runs, steps, pairs), open it at
``/judge?session=N`` (the instrument itself is ``app.judge_routes``: plain HTML, so nothing
identifying reaches the browser), and read a session's results: win rate of A over B per pair
of (run, step) with Wilson 95 % intervals, per task family, Bradley–Terry scores when several
checkpoints were judged, agreement between judges, and the "human" series of its runs.
Exports as CSV or JSON lines. Also the hooks that put a Judge button and the human series on
Compare and Experiments (``compare_hook``, ``experiment_hook``).

Deep links: ``judgments?runs=3,4&steps=10,40`` (a prefilled form), ``judgments?session=N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.common import esc, parse_ids, parse_int, queries
from app.figures import human as FH


def _sessions() -> Any:
    from grpo_guard.judging import sessions

    return sessions


def _store() -> Any:
    from grpo_guard.store import judgments

    return judgments


def run_labels(run_ids: Sequence[int]) -> dict[int, str]:
    return {r.id: f"#{r.id} {r.name}" for r in queries().runs_by_id(list(run_ids))}


# ---- results (pure shaping of a Summary) ----------------------------------------------------
def _ck(labels: dict[int, str], c: tuple[int, int]) -> str:
    return f"{esc(labels.get(c[0], f'#{c[0]} (deleted)'))} @ step {c[1]}"


def _rate_cells(r: Any) -> str:
    if r.rate is None:
        return "<td>—</td><td>—</td>"
    return f"<td>{r.rate:.3f}</td><td>[{r.lo:.3f}, {r.hi:.3f}]</td>"


def _pair_rows(stats: Sequence[Any], labels: dict[int, str], fam: bool) -> str:
    rows = []
    for p in stats:
        r = p.rate
        rows.append(f'<tr data-a="{p.a[0]}:{p.a[1]}" data-b="{p.b[0]}:{p.b[1]}" data-family="{esc(p.family)}">'
                    + (f"<td>{esc(p.family)}</td>" if fam else "")
                    + f"<td>{_ck(labels, p.a)}</td><td>{_ck(labels, p.b)}</td><td>{r.wins}</td><td>{r.losses}</td>"
                    f"<td>{r.ties}</td><td>{r.n}</td>{_rate_cells(r)}</tr>")
    head = ("<th>family</th>" if fam else "") + ("<th>A</th><th>B</th><th>A wins</th><th>B wins</th><th>ties</th>"
                                                  "<th>n</th><th>win rate of A</th><th>Wilson 95 %</th>")
    return f"<tr>{head}</tr>" + "".join(rows)


def results_html(summary: Any, labels: dict[int, str]) -> str:
    """A session's statistics as tables (each row carries its checkpoints as data attributes,
    so the browser test compares them with the store)."""
    s = summary
    if not s.judgments:
        return (f'<div class="gg-muted" id="judge-results-empty">Session {s.session_id}: no judgments yet. '
                f'<a class="gg-link" href="judge?session={s.session_id}" target="_self">Start judging</a>.</div>')
    parts = [f'<div id="judge-results" data-session="{s.session_id}" data-judgments="{s.judgments}">'
             f"<p><b>{s.judgments}</b> judgment(s) by {len(s.judges)} judge(s): {esc(', '.join(s.judges))}. "
             "Win rate of A over B counts ties as half; the interval is Wilson's 95 % score interval.</p>",
             f'<table class="gg-table" id="judge-results-pairs">{_pair_rows(s.pairs, labels, False)}</table>']
    if s.families:
        parts.append("<h4>Per task family</h4>"
                     f'<table class="gg-table" id="judge-results-families">{_pair_rows(s.families, labels, True)}</table>')
    for i, bt in enumerate(s.bradley_terry):
        rows = "".join(f'<tr data-ck="{k[0]}:{k[1]}"><td>{_ck(labels, k)}</td><td>{v:.4f}</td></tr>'
                       for k, v in sorted(bt.scores.items(), key=lambda kv: -kv[1]))
        note = (" Regularised with one virtual tie per compared pair: a checkpoint won or lost every comparison."
                if bt.regularised else "")
        parts.append(f"<h4>Bradley–Terry scores of {len(bt.scores)} checkpoints connected by judged pairs (MM "
                     f"iteration, ties half a win each; sum 1)</h4>{esc(note)}"
                     f'<table class="gg-table judge-results-bt" id="judge-results-bt-{i}">'
                     f"<tr><th>checkpoint</th><th>score</th></tr>{rows}</table>")
    if s.agreement is not None:
        a = s.agreement
        k = "undefined" if a.kappa is None else f"{a.kappa:.3f}"
        parts.append(f'<p id="judge-results-kappa" data-kappa="{"" if a.kappa is None else a.kappa}">Agreement: '
                     f"{_sessions().KAPPA_NAMES[a.method]} kappa <b>{k}</b> over {a.items} pair(s) judged by "
                     f"{a.judges} judges.</p>")
    else:
        parts.append('<p class="gg-muted">Agreement: needs two judges on the same pairs.</p>')
    if s.reasons:
        parts.append("<p>Reasons: " + esc(", ".join(f"{k} {v}" for k, v in s.reasons.items())) + "</p>")
    if s.median_decide_ms is not None:
        parts.append(f"<p>Median time to decide: {s.median_decide_ms / 1000:.2f} s</p>")
    return "".join(parts) + "</div>"


def session_choices() -> list[tuple[str, int]]:
    from grpo_guard.judging.pairs import spec_label

    return [(f"#{s.id} {s.name} · {spec_label(s.spec)} · {len(s.pairs)} pairs", s.id)
            for s in _store().list_sessions()]


def show_session(sid: Any) -> tuple[str, Any]:
    sid = parse_int(sid)
    if sid is None:
        return '<div class="gg-muted">No session yet: create one above.</div>', FH.human_figure({})
    try:
        sess = _store().get_session(sid)
        summary = _sessions().session_summary(sid)
    except LookupError:
        return f'<div class="gg-error">No judging session #{sid}.</div>', FH.human_figure({})
    runs = [int(r) for r in sess.spec.get("runs", [])]
    labels = run_labels(runs)
    link = (f'<p><a class="gg-link" id="judge-open" href="judge?session={sid}" target="_self">Judge session #{sid} '
            f"(blind)</a></p>")
    series = _sessions().human_series({labels.get(r, f"#{r}"): [r] for r in runs})
    return link + results_html(summary, labels), FH.human_figure(series, uirevision=f"judge-{sid}")


def create(runs: str, steps: str, pairs: Any, base: bool, name: str, request: gr.Request) -> tuple[Any, ...]:
    """(message, session dropdown, results, human figure) after the Create button."""
    ids = parse_ids(runs)
    step_list = [s.strip() for s in (steps or "").replace(";", ",").split(",") if s.strip()]
    n = parse_int(pairs)
    from grpo_guard.store.db import StoreError

    try:
        if not ids:
            raise ValueError("name the runs to judge, e.g. 3,4")
        sid = _sessions().new_session(ids, step_list or None, pairs=n, base=bool(base), name=name or "",
                                      created_by=getattr(request, "username", None) or "")
    except (ValueError, LookupError, StoreError) as e:
        return f'<div class="gg-error" id="judge-create-error">{esc(e)}</div>', gr.skip(), gr.skip(), gr.skip()
    n_pairs = len(_store().get_session(sid).pairs)
    msg = (f'<div class="gg-ok" id="judge-created" data-session="{sid}">Session #{sid}: {n_pairs} pair(s). '
           f'<a class="gg-link" id="judge-start-link" href="judge?session={sid}" target="_self">Start judging →</a></div>')
    html, fig = show_session(sid)
    return msg, gr.Dropdown(choices=session_choices(), value=sid), html, fig


# ---- hooks for Compare and Experiments -----------------------------------------------------
def judge_link(run_ids: Sequence[int]) -> str:
    return "judgments" + (f"?runs={','.join(map(str, run_ids))}" if run_ids else "")


def compare_hook(ids: Any) -> tuple[Any, Any]:
    """Compare: the Judge button for the selected runs and their human series."""
    run_ids = [int(i) for i in ids or []]
    labels = run_labels(run_ids)
    series = _sessions().human_series({labels[i]: [i] for i in run_ids if i in labels})
    rev = "cmp-" + "-".join(map(str, run_ids)) + "-human"
    return gr.Button(link=judge_link(run_ids)), FH.human_figure(series, uirevision=rev)


def experiment_hook(eid: Any) -> tuple[Any, Any]:
    """Experiments: the Judge button (the first seed's arms, controls left out, at matched
    steps) and the human series per arm, pooling its seeds' judgments."""
    eid = parse_int(eid)
    if eid is None:
        return gr.Button(link="judgments"), FH.human_figure({})
    try:
        members = queries().experiment_runs(eid)
    except LookupError:
        return gr.Button(link="judgments"), FH.human_figure({})
    arms: dict[str, list[int]] = {}
    for m in members:
        arms.setdefault(m.arm, []).append(m.run.id)
    seeds = sorted({m.seed for m in members})
    first = [m.run.id for m in members if seeds and m.seed == seeds[0] and not m.arm.endswith("/control")]
    series = _sessions().human_series(arms)
    return gr.Button(link=judge_link(first)), FH.human_figure(series, uirevision=f"exp-{eid}-human")


# ---- the page ------------------------------------------------------------------------------
with gr.Blocks(title="Judge") as page:
    gr.Markdown("## Human gold: blind A/B judging", elem_id="judge-title")
    gr.Markdown("Two images of the same prompt and seed, sides randomised, runs and steps hidden; ← / → / ↓ "
                "(left, right, tie). Several runs are judged at matched eval steps; one run: its steps against each "
                "other (default: best gold against last); *against base*: every step against step 0. The CLI does "
                "the same: `grpo-guard judge new --runs 3,4 [--steps 10,40] [--pairs 100]`.")
    with gr.Row(equal_height=True):
        runs_box = gr.Textbox(label="Runs (ids)", placeholder="3,4", scale=2, elem_id="judge-runs")
        steps_box = gr.Textbox(label="Steps (optional: numbers, best, last)", placeholder="10,40", scale=2,
                               elem_id="judge-steps")
        pairs_box = gr.Number(value=100, precision=0, minimum=1, maximum=20000, label="Pairs", scale=1,
                              elem_id="judge-pairs")
        base_box = gr.Checkbox(value=False, label="Against base (step 0)", scale=1, elem_id="judge-base")
        name_box = gr.Textbox(label="Name (optional)", scale=2, elem_id="judge-name")
        b_create = gr.Button("Create session", variant="primary", scale=1, elem_id="judge-create")
    created = gr.HTML("", elem_id="judge-create-message")
    gr.Markdown("### Sessions and results")
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(choices=[], value=None, label="Session", scale=4, elem_id="judge-session")
        b_refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="judge-refresh")
        b_csv = gr.Button("Export CSV", size="sm", scale=0, min_width=120, elem_id="judge-export-csv")
        b_jsonl = gr.Button("Export JSONL", size="sm", scale=0, min_width=120, elem_id="judge-export-jsonl")
    export_file = gr.File(label="Export", interactive=False, visible=False, elem_id="judge-export-file")
    results = gr.HTML("", elem_id="judge-results-box")
    human = gr.Plot(show_label=False, elem_id="judge-human")

    def on_load(request: gr.Request):
        params = dict(request.query_params) if request else {}
        choices = session_choices()
        sid = parse_int(params.get("session"))
        if sid is None and choices:
            sid = choices[0][1]
        html, fig = show_session(sid)
        ids = parse_ids(params.get("runs"))
        return (",".join(map(str, ids)), params.get("steps", "") or "", gr.Dropdown(choices=choices, value=sid),
                html, fig)

    page.load(on_load, None, [runs_box, steps_box, pick, results, human], api_visibility="private")
    pick.input(show_session, pick, [results, human], api_visibility="private")

    def on_refresh(sid):
        """New sessions in the list, and the chosen one's results with the judgments made since."""
        return gr.Dropdown(choices=session_choices(), value=parse_int(sid)), *show_session(sid)

    b_refresh.click(on_refresh, pick, [pick, results, human], api_visibility="private")

    b_create.click(create, [runs_box, steps_box, pairs_box, base_box, name_box], [created, pick, results, human],
                   api_name="judge_new")

    def on_export(sid, fmt):
        import os
        import tempfile

        sid = parse_int(sid)
        if sid is None:
            raise gr.Error("Pick a session first.")
        try:
            text = _sessions().export(sid, fmt)
        except LookupError as e:
            raise gr.Error(str(e)) from None
        path = os.path.join(tempfile.mkdtemp(prefix="gg-judgments-"), f"judgments-session-{sid}.{fmt}")
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        return gr.File(value=path, visible=True)

    b_csv.click(lambda s: on_export(s, "csv"), pick, export_file, api_name="judgments_export_csv")
    b_jsonl.click(lambda s: on_export(s, "jsonl"), pick, export_file, api_name="judgments_export_jsonl")

__all__ = ["page", "compare_hook", "experiment_hook"]

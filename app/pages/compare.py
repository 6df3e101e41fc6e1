"""Compare: eval images of one run as a step x prompt grid, the same prompt and seed across
runs side by side with a before/after wipe slider, metric curves of several runs overlaid
(A/B pairs by default) and a config diff. One step slider drives every image panel."""

from __future__ import annotations

import bisect
import re
from typing import Any
from urllib.parse import quote

import gradio as gr

from app import figures as F
from app.common import esc, fmt_float, parse_ids, parse_int, queries
from app.pages import evaluation_tables
from app.pages.judge import compare_hook  # human gold (issue #22): Judge link and human series
from grpo_guard import metrics as M

MAX_GRID_ROWS = 12
OVERLAY_DEFAULTS = ("eval/proxy", "eval/gold")


# ---- pure helpers --------------------------------------------------------------------------
def snap(steps: list[int], step: int | None) -> int | None:
    """The largest available step <= ``step`` (the first one if ``step`` is before all)."""
    if not steps:
        return None
    if step is None:
        return steps[-1]
    i = bisect.bisect_right(steps, int(step))
    return steps[max(0, i - 1)]


def grid_steps(steps: list[int], chosen: int | None, limit: int = MAX_GRID_ROWS) -> list[int]:
    """At most ``limit`` evenly spaced steps, always with the first, the last and ``chosen``."""
    if len(steps) <= limit:
        return list(steps)
    idx = {round(i * (len(steps) - 1) / (limit - 2)) for i in range(limit - 1)}
    picked = {steps[i] for i in idx}
    if chosen is not None:
        picked.add(chosen)
    return sorted(picked)


def file_url(path: str) -> str:
    """URL of a file under an allowed path (the artifact root, STACK.md G8)."""
    return "gradio_api/file=" + quote(path)


_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def display_prompt(prompt: str) -> str:
    """A prompt as shown to people: "a orange circle" -> "an orange circle". The stored prompt
    (the key of its eval samples) is left as the generator wrote it."""
    return _A_BEFORE_VOWEL.sub(lambda m: m.group(1) + "n ", prompt)


IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"RIFF")


def image_problem(path: str) -> str | None:
    """Why an eval image file cannot be shown (missing, unreadable, not an image), else None.
    Reads 8 bytes, so a broken file gets a message instead of a broken picture."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        return f"image file missing ({e.strerror})"
    if not head.startswith(IMAGE_MAGIC):
        return "image file is not a PNG/JPEG/GIF/WEBP image"
    return None


def default_selection(runs: list[Any]) -> list[int]:
    """The newest A/B pair (both arms, even one beyond ``runs``), else the two newest runs."""
    for r in runs:
        if r.pair_id:
            return queries().pair_of(r.id)
    return sorted(r.id for r in runs[:2])


def side_html(cards: list[tuple[str, str, str]]) -> str:
    """One card per run: (image path, title, caption)."""
    if not cards:
        return '<div class="gg-muted">No image for this prompt and seed at this step yet.</div>'
    items = "".join(f'<figure class="gg-card"><img src="{esc(file_url(p))}" alt="{esc(t)}"><figcaption><b>{esc(t)}</b>'
                    f"<br>{esc(c)}</figcaption></figure>" for p, t, c in cards)
    return f'<div class="gg-cards" id="compare-side-cards">{items}</div>'


def grid_html(samples: list[Any], steps: list[int], prompts: list[str], chosen: int | None, path_of) -> str:
    """An HTML table: one row per eval step, one column per prompt (same seed throughout);
    the chosen step's row is highlighted. Each image shows its proxy / gold on hover."""
    if not samples:
        return '<div class="gg-muted">No eval images for this run yet.</div>'
    by_key = {(s.step, s.prompt): s for s in samples}
    head = "".join(f'<th title="{esc(display_prompt(p))}"><span class="gg-colhead">{esc(display_prompt(p))}</span></th>'
                   for p in prompts)
    body = []
    for st in steps:
        cells = []
        for p in prompts:
            s = by_key.get((st, p))
            if s is None:
                cells.append('<td class="gg-missing">—</td>')
                continue
            try:
                path = path_of(s.image_location)
            except ValueError:
                cells.append('<td class="gg-missing">?</td>')
                continue
            why = image_problem(path)
            if why:
                cells.append(f'<td class="gg-missing" title="{esc(why)}">✗ {esc(why)}</td>')
                continue
            url = file_url(path)
            tip = f"step {st} · {display_prompt(p)} · proxy {fmt_float(s.proxy)} · gold {fmt_float(s.gold)}"
            cells.append(f'<td><img src="{esc(url)}" title="{esc(tip)}" loading="lazy"></td>')
        cls = ' class="gg-chosen"' if st == chosen else ""
        body.append(f'<tr{cls}><th class="gg-rowhead">step {st}</th>{"".join(cells)}</tr>')
    return (f'<div class="gg-grid-wrap"><table class="gg-grid" id="compare-grid"><thead><tr><th></th>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


# ---- queries -------------------------------------------------------------------------------
def wipe_steps(q: Any, step: int | None, a_run: Any, b_run: Any) -> tuple[int | None, int | None]:
    """The A and B step fields for the shared ``step``: the eval step each run will show (its
    own latest at or before ``step``), so a field never names a step its caption does not."""
    out = []
    for r in (parse_int(a_run), parse_int(b_run)):
        out.append(None if r is None else snap(q.sample_steps(r), step))
    return out[0], out[1]



def _labels(q: Any, ids: list[int]) -> dict[int, str]:
    out = {}
    for i in ids:
        try:
            r = q.get_run(i)
            out[i] = f"#{r.id} {r.name}"
        except LookupError:
            continue
    return out


def metric_panel(ids: list[int], key: str | None, normalize: bool) -> tuple[Any, Any, Any, Any]:
    """Overlay of proxy, gold and a chosen key across runs, plus gold-at-equal-proxy."""
    q = queries()
    labels = _labels(q, ids)
    keys = list(dict.fromkeys([*OVERLAY_DEFAULTS, F.ALARM_KEY, *([key] if key else [])]))
    runs = {labels[i]: q.metric_series(i, keys, max_points=1000) for i in labels}
    onsets = {labels[i]: F.onset_of_run(runs[labels[i]]) for i in labels}
    rev = "cmp-" + "-".join(map(str, labels))
    return (F.overlay_figure(runs, "eval/proxy", title="Proxy reward (eval)", normalize=normalize, onsets=onsets,
                             uirevision=rev + "-p"),
            F.overlay_figure(runs, "eval/gold", title="Gold (eval)", normalize=normalize, onsets=onsets,
                             uirevision=rev + "-g"),
            F.overlay_figure(runs, key, normalize=normalize, uirevision=rev + "-k") if key else
            F.empty_figure("metric", "pick a metric"),
            F.gold_vs_proxy_figure(runs, uirevision=rev + "-gp"))


def config_table(ids: list[int], only_diff: bool) -> list[list[str]]:
    q = queries()
    cfgs = {}
    for i in ids:
        try:
            cfgs[f"#{i}"] = q.get_run(i).config
        except LookupError:
            continue
    headers, rows = F.config_diff(cfgs, only_differences=only_diff)
    if not rows:
        rows = [["(no differences)" if len(cfgs) > 1 else "(select runs)", *[""] * (len(headers) - 1)]]
    return gr.Dataframe(value=rows, headers=headers)


# ---- the page ------------------------------------------------------------------------------
with gr.Blocks(title="Compare") as page:
    gr.Markdown("## Compare runs", elem_id="compare-title")
    with gr.Row(equal_height=True):
        runs_pick = gr.Dropdown(choices=[], value=[], multiselect=True, label="Runs", scale=4, elem_id="compare-runs")
        refresh = gr.Button("Refresh", scale=0, min_width=110, elem_id="compare-refresh")
        judge_btn = gr.Button("Judge", link="judgments", scale=0, min_width=100, elem_id="compare-judge")  # issue #22
        live = gr.Checkbox(value=True, label="Live", scale=0, min_width=90, elem_id="compare-live")
    timer = gr.Timer(2.0)
    step = gr.Slider(0, 1, value=0, step=1, label="Step (shared by every image panel; snaps to each run's eval steps)",
                     elem_id="compare-step")
    with gr.Row(equal_height=True):
        prompt = gr.Dropdown(choices=[], value=None, label="Prompt", scale=3, elem_id="compare-prompt")
        seed = gr.Dropdown(choices=[], value=None, label="Seed", scale=1, elem_id="compare-seed")
    gr.Markdown("### Same prompt and seed across runs")
    side = gr.HTML('<div class="gg-muted">Select runs.</div>', elem_id="compare-side")
    gr.Markdown("### Before / after")
    with gr.Row(equal_height=True):
        a_run = gr.Dropdown(choices=[], value=None, label="A: run", scale=2, elem_id="wipe-a-run")
        a_step = gr.Number(value=None, precision=0, label="A: step", scale=1, elem_id="wipe-a-step")
        b_run = gr.Dropdown(choices=[], value=None, label="B: run", scale=2, elem_id="wipe-b-run")
        b_step = gr.Number(value=None, precision=0, label="B: step", scale=1, elem_id="wipe-b-step")
    with gr.Row():
        wipe = gr.ImageSlider(value=None, type="filepath", label="A | B", slider_position=50, height=420, max_height=420,
                              elem_id="compare-wipe", interactive=False)
        wipe_info = gr.Markdown("", elem_id="compare-wipe-info")
    gr.Markdown("### Image grid: eval steps × prompts")
    grid_run = gr.Dropdown(choices=[], value=None, label="Run", elem_id="grid-run")
    grid = gr.HTML('<div class="gg-muted">Select runs.</div>', elem_id="compare-grid-box")
    gr.Markdown("### Metrics")
    with gr.Row(equal_height=True):
        metric = gr.Dropdown(choices=[], value=None, label="Metric", scale=3, elem_id="compare-metric")
        normalize = gr.Checkbox(value=False, label="Relative to step 0", scale=1)
    with gr.Row():
        fig_proxy = gr.Plot(show_label=False, elem_id="compare-proxy")
        fig_gold = gr.Plot(show_label=False, elem_id="compare-gold")
        fig_human = gr.Plot(show_label=False, elem_id="compare-human")  # human gold (app/pages/judge.py)
    with gr.Row():
        fig_metric = gr.Plot(show_label=False, elem_id="compare-metric-plot")
        fig_gp = gr.Plot(show_label=False, elem_id="compare-gold-vs-proxy")
    evaluation_tables.compare_box(runs_pick)
    gr.Markdown("### Config")
    only_diff = gr.Checkbox(value=True, label="Differences only")
    cfg_table = gr.Dataframe(value=[], interactive=False, elem_id="compare-config", wrap=True)

    # -- load: runs from ?runs=1,2 (else the newest A/B pair) and ?step= --
    def on_load(request: gr.Request):
        q = queries()
        runs = q.list_runs(limit=500)
        params = dict(request.query_params) if request else {}
        ids = [r.id for r in q.runs_by_id(parse_ids(params.get("runs")))] or default_selection(runs)
        listed = {r.id for r in runs}
        runs += q.runs_by_id([i for i in ids if i not in listed])  # a deep link may name runs older than the list
        choices = [(f"#{r.id} {r.name} ({r.algorithm})", r.id) for r in runs]
        return gr.Dropdown(choices=choices, value=ids, multiselect=True), parse_int(params.get("step"))

    want_step = gr.State(None)

    # -- selection changed: ranges, choices, metrics, config --
    def on_runs(ids, wanted, norm, diff, keep=None):
        """``keep``: the current prompt, seed, grid run, A, B and metric, kept where still offered (a
        live redraw must not undo the user's choices)."""
        ids = [int(i) for i in ids or []]
        q = queries()
        labels = _labels(q, ids)
        all_steps = sorted({s for i in labels for s in q.sample_steps(i)})
        pairs = sorted({pr for i in labels for pr in q.sample_prompts(i)})
        prompts = sorted({p for p, _ in pairs})
        seeds = sorted({s for _, s in pairs})
        hi = all_steps[-1] if all_steps else 1
        chosen = snap(all_steps, wanted) if wanted is not None else (all_steps[-1] if all_steps else 0)
        keys = sorted({k for i in labels for k in q.metric_keys(i)})
        run_choices = [(labels[i], i) for i in labels]
        first = next(iter(labels), None)
        second = list(labels)[1] if len(labels) > 1 else first
        # a GenEval run is compared on GenEval's Overall (the paper's figure) first
        key = next((k for k in (M.GENEVAL_OVERALL, *F.REWARD_MEAN_KEYS) if k in keys), keys[0] if keys else None)
        picks = [prompts[0] if prompts else None, seeds[0] if seeds else None, first, first, second, key]
        offered = [prompts, seeds, list(labels), list(labels), list(labels), keys]
        for n, (current, allowed) in enumerate(zip(keep or [None] * 6, offered, strict=True)):
            value = parse_int(current) if n in (1, 2, 3, 4) else current
            if value is not None and value in allowed:
                picks[n] = value
        figs = metric_panel(list(labels), picks[5], norm)
        return (gr.Slider(minimum=all_steps[0] if all_steps else 0, maximum=max(hi, 1), value=chosen or 0),
                gr.Dropdown(choices=[(display_prompt(p), p) for p in prompts], value=picks[0]),
                gr.Dropdown(choices=seeds, value=picks[1]),
                gr.Dropdown(choices=run_choices, value=picks[2]), gr.Dropdown(choices=run_choices, value=picks[3]),
                gr.Dropdown(choices=run_choices, value=picks[4]), gr.Dropdown(choices=keys, value=picks[5]),
                *figs, config_table(list(labels), diff), all_steps[-1] if all_steps else None)

    latest = gr.State(None)  # the newest eval step of the selection at the last redraw

    def on_live(ids, st, last, norm, diff, *keep):
        """New rows arrived: redraw, following the newest eval step unless the slider was moved back."""
        st = parse_int(st)
        wanted = None if last is None or st is None or st >= last else st
        return on_runs(ids, wanted, norm, diff, keep=keep)

    runs_outputs = [step, prompt, seed, grid_run, a_run, b_run, metric, fig_proxy, fig_gold, fig_metric, fig_gp, cfg_table,
                    latest]

    # -- image panels, all driven by the shared step --
    def images(ids, st, p, sd, g_run, a_r, b_r):
        ids = [int(i) for i in ids or []]
        q = queries()
        st = parse_int(st)
        sd = parse_int(sd)
        labels = _labels(q, ids)
        cards, notes = [], []
        for i in labels:
            steps = q.sample_steps(i)
            s_step = snap(steps, st)
            if s_step is None or p is None or sd is None:
                continue
            rows = q.samples_for(i, prompt=p, seed=sd, step=s_step)
            if rows:
                try:
                    path = q.artifact_path(rows[0].image_location)
                except ValueError:
                    continue
                why = image_problem(path)
                if why:
                    notes.append(f"{labels[i]}: {why}")
                    continue
                cards.append((path, labels[i], f"step {s_step} · proxy {fmt_float(rows[0].proxy)} · "
                                                f"gold {fmt_float(rows[0].gold)}"))
        g_html = '<div class="gg-muted">Pick a run for the grid.</div>'
        g_run = parse_int(g_run)
        if g_run is not None and sd is not None:
            steps = q.sample_steps(g_run)
            chosen = snap(steps, st)
            samples = q.samples_for(g_run, seed=sd)
            prompts = sorted({s.prompt for s in samples})
            g_html = grid_html(samples, grid_steps(steps, chosen), prompts, chosen, q.artifact_path)
        note_html = "".join(f'<div class="gg-muted gg-image-problem">{esc(n)}</div>' for n in notes)
        return side_html(cards) + note_html, g_html, *wipe_steps(q, st, a_r, b_r)

    image_outputs = [side, grid, a_step, b_step]
    image_inputs = [runs_pick, step, prompt, seed, grid_run, a_run, b_run]

    def wipe_images(ar, ast, br, bst, p, sd):
        q = queries()
        sd = parse_int(sd)
        out, info = [], []
        for tag, r, st in (("A", ar, ast), ("B", br, bst)):
            r, st = parse_int(r), parse_int(st)
            if r is None or p is None or sd is None:
                return None, ""
            s_step = snap(q.sample_steps(r), st)
            rows = q.samples_for(r, prompt=p, seed=sd, step=s_step) if s_step is not None else []
            if not rows:
                return None, f"{tag}: run #{r} has no image for this prompt/seed yet."
            try:
                path = q.artifact_path(rows[0].image_location)
            except ValueError as e:
                return None, f"{tag}: run #{r}: {e}"
            why = image_problem(path)
            if why:
                return None, f"{tag}: run #{r} step {s_step}: {why}."
            out.append(path)
            info.append(f"**{tag}**: run #{r} · step {s_step} · proxy {fmt_float(rows[0].proxy)} · gold {fmt_float(rows[0].gold)}")
        return tuple(out), "<br>".join(info)

    wipe_inputs = [a_run, a_step, b_run, b_step, prompt, seed]

    page.load(on_load, None, [runs_pick, want_step], api_visibility="private")
    runs_pick.change(on_runs, [runs_pick, want_step, normalize, only_diff], runs_outputs, api_visibility="private",
                     trigger_mode="always_last").then(
        images, image_inputs, image_outputs, api_visibility="private").then(
        wipe_images, wipe_inputs, [wipe, wipe_info], api_visibility="private")
    refresh.click(on_runs, [runs_pick, step, normalize, only_diff], runs_outputs, api_visibility="private").then(
        images, image_inputs, image_outputs, api_visibility="private").then(
        wipe_images, wipe_inputs, [wipe, wipe_info], api_visibility="private")
    # -- live: a 2 s check of the selection's newest stored step (one primary-key read per run); the
    #    page redraws only when it moved, so it fills in by itself as a run's first points arrive --
    seen = gr.State(None)

    def poll(ids, prev):
        ids = [int(i) for i in ids or []]
        cur = sorted(queries().max_steps(ids).items()) if ids else None
        return gr.skip() if cur == prev else cur

    timer.tick(poll, [runs_pick, seen], seen, api_visibility="private", show_progress="hidden",
               concurrency_limit=None, trigger_mode="always_last")
    seen.change(on_live, [runs_pick, step, latest, normalize, only_diff, prompt, seed, grid_run, a_run, b_run, metric],
                runs_outputs, api_visibility="private", show_progress="hidden", trigger_mode="always_last").then(
        images, image_inputs, image_outputs, api_visibility="private", show_progress="hidden").then(
        wipe_images, wipe_inputs, [wipe, wipe_info], api_visibility="private", show_progress="hidden")
    live.change(lambda on: gr.Timer(active=bool(on)), live, timer, api_visibility="private")

    for comp in (step, prompt, seed, grid_run):
        comp.input(images, image_inputs, image_outputs, api_visibility="private",
                   trigger_mode="always_last", show_progress="hidden").then(
            wipe_images, wipe_inputs, [wipe, wipe_info], api_visibility="private", show_progress="hidden")
    def wipe_panel(ar, ast, br, bst, p, sd):
        """The wipe after A or B changed, with each step field snapped to the step it shows."""
        q = queries()
        a_s = snap(q.sample_steps(ar), parse_int(ast)) if parse_int(ar) is not None else None
        b_s = snap(q.sample_steps(br), parse_int(bst)) if parse_int(br) is not None else None
        return *wipe_images(ar, a_s, br, b_s, p, sd), a_s, b_s

    for comp in (a_run, a_step, b_run, b_step):
        comp.input(wipe_panel, wipe_inputs, [wipe, wipe_info, a_step, b_step], api_visibility="private",
                   trigger_mode="always_last", show_progress="hidden")

    def on_metric(ids, key, norm):
        return metric_panel([int(i) for i in ids or []], key, norm)

    runs_pick.change(compare_hook, runs_pick, [judge_btn, fig_human], api_visibility="private")

    metric.input(on_metric, [runs_pick, metric, normalize], [fig_proxy, fig_gold, fig_metric, fig_gp],
                 api_visibility="private")
    normalize.input(on_metric, [runs_pick, metric, normalize], [fig_proxy, fig_gold, fig_metric, fig_gp],
                    api_visibility="private")
    only_diff.input(lambda ids, d: config_table([int(i) for i in ids or []], d), [runs_pick, only_diff], cfg_table,
                    api_visibility="private")

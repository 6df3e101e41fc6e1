"""Run: live figures of one run (proxy vs gold, rewards, ratio heatmaps, clipping by advantage
sign, per-step gradient norms, KL, lr), its logs, config, checkpoints and status, and the
stop / sample-now / save-now buttons.

Live refresh (STACK.md §6): a private 1 s timer reads the run's ``last_step`` and status into
a cursor; the page redraws only when the cursor moved, from data cached and read
incrementally by ``app.run_cache``, and resends only the figures that changed. A zoom survives
the redraw (stable ``uirevision`` per run and figure, re-applied by ``app.main.KEEP_ZOOM_JS``).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import gradio as gr
import yaml

from app import figures as F
from app import run_cache
from app.common import (
    alarm_badge,
    ema_notice_html,
    esc,
    fmt_duration,
    fmt_float,
    fmt_time,
    parse_int,
    progress_html,
    queries,
    run_onset,
    status_badge,
    stop_run,
)
from app.pages import run_evaluations, run_export
from app.pages.run_gang import gang_section
from grpo_guard import metrics as M
from grpo_guard.experiments.report import run_verdict
from grpo_guard.store.entities import ACTIVE_STATUSES

# Scalar families every series figure reads, besides the keys named below.
_SERIES_PREFIXES = (M.EVAL_PREFIX, M.REWARD_PREFIX)
SCALAR_KEYS = [M.KL, M.LR, M.GRAD_NORM, M.POLICY_LOSS]
HEATMAPS = [M.R_MEAN_MINUS_1, M.RHAT_MEAN_MINUS_1, M.R_STD, M.RHAT_STD]
CLIP_STATS = [M.POS_ADV_CLIPPED, M.NEG_ADV_CLIPPED]  # by advantage sign: the ones that tell Guard from Flow-GRPO
LOG_TAIL = 300
SUMMARY_MAX_AGE = 10.0  # seconds between re-reads of the runs-table row (ETA, stale flag)


# ---- data -> figures -----------------------------------------------------------------------
SERIES_FIGURES = [M.PROXY_GOLD_CHART, M.REWARDS_CHART, M.SCALARS_CHART]
STAT_FIGURES = [*HEATMAPS, M.CLIP_CHART, M.CLIP_HEAT_CHART, M.GRAD_CHART]
FIGURE_NAMES = [*SERIES_FIGURES, *STAT_FIGURES]


def series_figures(q: Any, run_id: int, config: dict[str, Any], last_step: int, normalize: bool,
                   total: int | None = None) -> dict[str, Any]:
    """Proxy vs gold, rewards, training scalars (and ``_onset``), from the cached series;
    ``total`` is the run's planned number of steps (the proxy-vs-gold x-axis spans it)."""
    rev = f"run-{run_id}"
    keys, _ = run_cache.key_lists(q, run_id, last_step)
    gold_extra = F.gold_keys(keys, config.get("gold"))
    wanted = [k for k in keys if k.startswith(_SERIES_PREFIXES) or k in
              (M.ZERO_STD_RATIO, M.ADV_ABS_MEAN, F.ALARM_KEY, *SCALAR_KEYS)]
    series = run_cache.series(q, run_id, wanted, last_step)
    onset = F.onset_of_run(series)
    missing = {M.KL: "not used (kl_beta = 0)"} if config.get("kl_beta") == 0 else {}
    return {
        M.PROXY_GOLD_CHART: F.proxy_gold_figure(series, onset=onset, normalize=normalize, extra_gold=gold_extra,
                                          uirevision=f"{rev}-pg-{int(normalize)}", x_max=total),
        M.REWARDS_CHART: F.reward_figure(series, uirevision=f"{rev}-rw"),
        M.SCALARS_CHART: F.scalars_figure(series, SCALAR_KEYS, title="KL, learning rate, grad norm, loss",
                                    uirevision=f"{rev}-sc", log_y=("lr",), missing=missing),
        "_onset": onset,
    }


# Which statistics each per-step figure is drawn from (it is redrawn only when they were re-read).
STAT_DEPS: dict[str, tuple[str, ...]] = {**{h: (h,) for h in HEATMAPS}, M.CLIP_CHART: tuple(CLIP_STATS),
                                         M.CLIP_HEAT_CHART: (M.POS_ADV_CLIPPED,), M.GRAD_CHART: (M.GRAD_NORM_V,)}


def stat_figures(q: Any, run_id: int, last_step: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{figure: (versions of its statistics, figure)}`` for the per-denoising-step figures;
    each is rebuilt only when one of its matrices was re-read."""
    rev = f"run-{run_id}"
    _, available = run_cache.key_lists(q, run_id, last_step)
    versions, mats = run_cache.stat_matrices(q, run_id, [*HEATMAPS, *CLIP_STATS, M.GRAD_NORM_V], available, last_step)

    def make(name: str) -> Any:
        if name in HEATMAPS:
            return F.stat_heatmap(*mats[name], stat=name, uirevision=f"{rev}-{name}")
        if name == M.CLIP_CHART:
            steps, js, _ = next((m for m in (mats[s] for s in CLIP_STATS) if m[0].size), mats[CLIP_STATS[0]])
            return F.clip_by_sign_figure(steps, js, {s: mats[s][2] for s in CLIP_STATS if mats[s][0].size},
                                         uirevision=f"{rev}-clip")
        if name == M.CLIP_HEAT_CHART:
            return F.stat_heatmap(*mats[M.POS_ADV_CLIPPED], stat=M.POS_ADV_CLIPPED,
                                  title="A>0 clipped above 1+ε, per step", uirevision=f"{rev}-cliph")
        return F.grad_norm_figure(*mats[M.GRAD_NORM_V], uirevision=f"{rev}-grad")

    out = {}
    for name, deps in STAT_DEPS.items():
        ver = tuple(versions[d] for d in deps)
        out[name] = (ver, run_cache.memo(run_id, ("stat_figure", name, ver), lambda n=name: make(n), keep=64))
    return out


def build_figures(run_id: int, *, normalize: bool = True, config: dict[str, Any] | None = None,
                  last_step: int | None = None, q: Any = None) -> dict[str, Any]:
    """Every figure of the Run page (plus ``_onset``)."""
    q = q or queries()
    last_step = q.max_steps([run_id]).get(run_id, -1) if last_step is None else last_step
    figs = series_figures(q, run_id, config or {}, last_step, normalize)
    return {**figs, **{name: fig for name, (_, fig) in stat_figures(q, run_id, last_step).items()}}


def run_label(run: Any) -> str:
    """The run selector's label of a run."""
    return f"#{run.id} {run.name}"


def header_html(run: Any, summary: Any | None, onset: int | None,
                experiment: tuple[int, str, int] | None = None, verdict: Any | None = None) -> str:
    eta = summary.eta_seconds if summary is not None else None
    stale = summary.stale if summary is not None else False
    flags = [n for n, on in (("stop requested", run.stop_requested), ("sample now pending", run.sample_now),
                             ("save now pending", run.save_now)) if on]
    pair = f' · <a class="gg-link" href="compare?runs={run.id}" target="_self">compare</a>'
    parent = f' · clone of <a class="gg-link" href="run?run={run.parent_id}" target="_self">#{run.parent_id}</a>' if run.parent_id else ""
    if experiment is not None:  # (experiment id, arm, seed): the run is one cell of an experiment
        parent += (f' · experiment <a class="gg-link" href="experiments?experiment={experiment[0]}" target="_self">'
                   f'#{experiment[0]}</a> ({esc(experiment[1])}, seed {experiment[2]})')
    err = f'<div class="gg-error">{esc(run.error.splitlines()[0])}</div>' if run.error else ""
    tags = "".join(f'<span class="gg-tag">{esc(t)}</span>' for t in run.tags)
    return (f'<div class="gg-run-header" id="run-header" data-status="{esc(run.status)}" data-step="{run.last_step}">'
            f'<div class="gg-run-title"><span class="gg-run-name">#{run.id} {esc(run.name)}</span> '
            f'{status_badge(run.status, stale=stale)} {alarm_badge(onset)} {tags}</div>'
            f'<div class="gg-run-sub">{esc(run.algorithm)} · {esc(run.backbone)}'
            f'{" · attempt " + str(run.attempt) if run.attempt > 1 else ""}{parent}{pair}'
            f'{" · " + ", ".join(flags) if flags else ""}</div>'
            f"{progress_html(run.step, run.total, run.status, eta)}"
            f"<div class=\"gg-run-sub\">latest eval (step {run.last_eval_step if run.last_eval_step is not None else '—'}): "
            f"proxy <b>{fmt_float(run.last_proxy)}</b> · gold <b>{fmt_float(run.last_gold)}</b></div>"
            f"{_verdict_html(verdict)}{ema_notice_html(run.config, run.last_eval_step)}{err}</div>")


def _verdict_html(verdict: Any | None) -> str:
    """The experiment's alarm for this run, naming its reference (the control's band, or the trend
    rule that cannot tell noise from over-optimisation)."""
    if verdict is None:
        return ""
    onset = f"⚠ step {verdict.onset}" if verdict.onset is not None else "not fired"
    return (f'<div class="gg-run-sub" id="run-exp-alarm" data-method="{esc(verdict.method)}">over-optimisation '
            f"alarm ({esc(verdict.method)}): {esc(onset)}: {esc(verdict.note)}</div>")


def worker_text(run: Any) -> str:
    """Where the run ran: host and GPU, or host and "CPU" (a worker without a GPU id)."""
    if not run.worker_host:
        return "—"
    return f"{run.worker_host} · " + (f"GPU {run.worker_gpu}" if run.worker_gpu else "CPU")


def controls(status: str) -> tuple[Any, Any, Any]:
    """Stop, Sample now and Save now: usable only while the run can still act on them (Stop also on an
    interrupted run: it is then cancelled and does not resume by itself)."""
    on = status in ACTIVE_STATUSES
    return gr.Button(interactive=on or status == "interrupted"), gr.Button(interactive=on), gr.Button(interactive=on)


def reward_server_rows(series: dict[str, tuple[list[int], list[float]]]) -> list[tuple[str, str]]:
    """One Status row per reward server of the run: its last latency and its failed attempts
    in all (``reward/<name>/latency`` and ``reward/<name>/failures``, grpo_guard.metrics)."""
    from grpo_guard import metrics as M

    rows = []
    names = sorted({n for k in series if (n := M.name_in(M.REWARD_FAILURES, k) or M.name_in(M.REWARD_LATENCY, k))})
    for name in names:
        lat = series.get(M.REWARD_LATENCY.format(name=name), ([], []))[1]
        fails = series.get(M.REWARD_FAILURES.format(name=name), ([], []))[1]
        text = (f"last latency {lat[-1]:.3f} s" if lat else "no answer yet") + \
            f", {int(sum(v for v in fails if v == v))} failed attempt(s) in all"
        rows.append((f"reward server {name}", text))
    return rows


def _reward_servers(q: Any, run_id: int) -> list[tuple[str, str]]:
    keys = [k for k in q.metric_keys(run_id) if k.startswith("reward/") and k.endswith(("/latency", "/failures"))]
    return reward_server_rows(q.metric_series(run_id, keys)) if keys else []


def last_stored(step: int) -> str:
    """-1 is the store's "no step stored yet", which reads as a bug when printed."""
    return f"last stored step {step}" if step >= 0 else "no step stored yet"


def status_markdown(run: Any, extra: list[tuple[str, str]] | None = None) -> str:
    now = datetime.now(UTC)
    hb = f"{fmt_duration((now - run.heartbeat_at).total_seconds())} ago" if run.heartbeat_at else "—"
    rows = [("status", run.status), ("step", f"{run.step} / {run.total} ({last_stored(run.last_step)})"),
            ("attempt", run.attempt), ("worker", worker_text(run)),
            ("task id", run.task_id or "—"), ("heartbeat", hb), ("created", fmt_time(run.created_at, now=now)),
            ("enqueued", fmt_time(run.enqueued_at, now=now)), ("started", fmt_time(run.started_at, now=now)),
            ("finished", fmt_time(run.finished_at, now=now)), ("parent run", run.parent_id or "—"),
            ("A/B pair", run.pair_id or "—"), ("notes", run.notes or "—"), *(extra or [])]
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]])


def log_text(lines: list[Any]) -> str:
    return "\n".join(f"{fmt_time(r.created_at)} {r.level.upper():7s} {r.message}" for r in lines) or "(no log lines yet)"


def checkpoint_rows(ckpts: list[Any], best_step: int | None = None) -> list[list[Any]]:
    """One row per checkpoint; the best-gold one (``queries.best_checkpoint``) is marked."""
    return [[c.step, fmt_time(c.created_at),
             c.location if getattr(c, "on_disk", True) else f"{c.location} (deleted: keep_checkpoints)",
             ("★ best gold · " if c.step == best_step else "")
             + ", ".join(f"{k}={v}" for k, v in (c.meta or {}).items())[:80]]
            for c in ckpts]


def checkpoint_files(ckpts: list[Any], q: Any) -> list[str]:
    """Paths (inside the artifact root) of each checkpoint file and its JSON sidecar."""
    out = []
    for c in ckpts:
        try:
            path = q.artifact_path(c.location)
        except ValueError:
            continue
        for p in (path, os.path.splitext(path)[0] + ".json"):
            if os.path.isfile(p) and p not in out:
                out.append(p)
    return out


def _summary(q: Any, run_id: int) -> Any | None:
    """The runs-table row (ETA, stale flag) of one run, re-read every SUMMARY_MAX_AGE s."""
    def read() -> Any | None:
        try:
            return q.get_run_summary(run_id)
        except LookupError:  # deleted since the page last read it
            return None

    return run_cache.memo(run_id, ("summary", int(time.monotonic() // SUMMARY_MAX_AGE)), read)


def tail_logs(run_id: int | None, level: str) -> Any:
    """The last LOG_TAIL lines of the run (``level`` 'all' or one level)."""
    if run_id is None:
        return gr.skip()
    return log_text(queries().log_lines(run_id, tail=LOG_TAIL, level=None if level == "all" else level))


def cursor_of(run: Any) -> tuple:
    """What the 1 s poll compares: it changes when a step lands or the state moves."""
    return (run.id, run.last_step, run.status, run.last_eval_step, run.stop_requested, run.sample_now, run.save_now)


def poll_cursor(run_id: int | None) -> tuple | None:
    """The 1 s change check: one primary-key read of the run (None if there is no such run).
    The row is kept for the redraw that a moved cursor triggers."""
    if run_id is None:
        return None
    try:
        run = queries().get_run(run_id)
    except LookupError:
        return None
    cur = cursor_of(run)
    run_cache.memo(run_id, ("row", cur), lambda: run, keep=16)
    return cur


def render_run(run_id: int | None, cursor: tuple | None, normalize: bool, shown: Any = None) -> tuple | None:
    """What the Run page redraws when the cursor moved: the figures (FIGURE_NAMES order), header,
    checkpoints table and files, status, traceback, the Stop / Sample now / Save now buttons
    (usable only on an active run), and the new ``shown`` token. A
    per-denoising-step figure comes back as ``gr.skip()`` when ``shown`` says this page already
    has that version of it (its matrices were not re-read)."""
    if run_id is None or cursor is None:
        return None
    q = queries()
    try:
        run = run_cache.memo(run_id, ("row", cursor), lambda: q.get_run(run_id), keep=16)
    except LookupError:
        return None
    last_step = cursor[1]
    key = (run_id, cursor, bool(normalize))
    figs = run_cache.memo(run_id, ("series_figures", key),
                          lambda: series_figures(q, run_id, run.config, last_step, bool(normalize), run.total))
    stats = stat_figures(q, run_id, last_step)
    token = {"run": run_id, **{n: stats[n][0] for n in STAT_FIGURES}}
    same = isinstance(shown, dict) and shown.get("run") == run_id
    stat_out = [gr.skip() if same and shown.get(n) == stats[n][0] else stats[n][1] for n in STAT_FIGURES]
    onset = figs["_onset"] if figs["_onset"] is not None else run_onset(run_id, run.last_eval_step)
    ckpts = q.checkpoints(run_id)
    best = q.best_checkpoint(run_id)  # listed first among the downloads
    files = checkpoint_files(sorted(ckpts, key=lambda c: best is None or c.step != best.step), q)
    health = run_cache.memo(run_id, ("reward_servers", cursor), lambda: _reward_servers(q, run_id))
    exp = q.experiment_of(run_id)
    verdict = None if exp is None else run_cache.memo(run_id, ("exp_alarm", cursor), lambda: run_verdict(run_id, exp))
    return (*[figs[n] for n in SERIES_FIGURES], *stat_out,
            header_html(run, _summary(q, run_id), onset, exp, verdict),
            checkpoint_rows(ckpts, best.step if best else None), files or None,
            status_markdown(run, health) + gang_section(run),
            gr.Code(value=run.traceback or "", visible=bool(run.traceback)), *controls(run.status), token)


# ---- the page ------------------------------------------------------------------------------
with gr.Blocks(title="Run") as page:
    rid_state = gr.State(None)
    cursor = gr.State(None)
    shown = gr.State(None)  # which per-step-statistics figures this page already shows
    with gr.Row(equal_height=True):
        run_pick = gr.Dropdown(choices=[], value=None, label="Run", scale=3, elem_id="run-pick")
        live = gr.Checkbox(value=True, label="Live", scale=0, min_width=90, elem_id="run-live")
        normalize = gr.Checkbox(value=True, label="Proxy/gold relative to step 0", scale=0, min_width=170,
                                elem_id="run-normalize")
        b_stop = gr.Button("Stop", variant="stop", scale=0, min_width=100, elem_id="run-stop")
        b_sample = gr.Button("Sample now", scale=0, min_width=120, elem_id="run-sample-now")
        b_save = gr.Button("Save now", scale=0, min_width=110, elem_id="run-save-now")
    header = gr.HTML('<div class="gg-muted">Pick a run.</div>', elem_id="run-header-box")
    message = gr.HTML("", elem_id="run-message")
    run_evaluations.overlap_banner(rid_state)
    plots: dict[str, gr.Plot] = {}
    plots[M.PROXY_GOLD_CHART] = gr.Plot(label="Proxy vs gold", show_label=False, elem_id="plot-proxy-gold")
    with gr.Row():
        plots[M.REWARDS_CHART] = gr.Plot(show_label=False, elem_id="plot-rewards")
        plots[M.SCALARS_CHART] = gr.Plot(show_label=False, elem_id="plot-scalars")
    gr.Markdown("#### Importance ratio per denoising step: raw (Flow-GRPO) and normalized (RatioNorm)")
    with gr.Row():
        plots[M.R_MEAN_MINUS_1] = gr.Plot(show_label=False, elem_id="plot-r-mean")
        plots[M.RHAT_MEAN_MINUS_1] = gr.Plot(show_label=False, elem_id="plot-rhat-mean")
    with gr.Row():
        plots[M.R_STD] = gr.Plot(show_label=False, elem_id="plot-r-std")
        plots[M.RHAT_STD] = gr.Plot(show_label=False, elem_id="plot-rhat-std")
    with gr.Row():
        plots[M.CLIP_CHART] = gr.Plot(show_label=False, elem_id="plot-clip")
        plots[M.CLIP_HEAT_CHART] = gr.Plot(show_label=False, elem_id="plot-clip-heat")
    plots[M.GRAD_CHART] = gr.Plot(show_label=False, elem_id="plot-grad")
    with gr.Tabs():
        with gr.Tab("Logs", elem_id="tab-logs"):
            with gr.Row():
                log_level = gr.Dropdown(choices=["all", "debug", "info", "warning", "error"], value="all", label="Level",
                                        scale=0, min_width=140)
                follow = gr.Checkbox(value=True, label="Follow", scale=0, min_width=100, elem_id="log-follow")
            logs = gr.Textbox(value="", lines=16, max_lines=16, autoscroll=True, interactive=False, show_label=False,
                              elem_id="run-logs", buttons=["copy"])
        with gr.Tab("Config", elem_id="tab-config"):
            config_code = gr.Code(value="", language="yaml", interactive=False, elem_id="run-config", buttons=["copy", "download"])
        with gr.Tab("Checkpoints", elem_id="tab-checkpoints"):
            ckpt_table = gr.Dataframe(headers=["step", "saved", "location", "meta"], value=[], interactive=False,
                                      elem_id="run-checkpoints")
            ckpt_files = gr.File(label="Download (weights + JSON sidecar)", file_count="multiple", interactive=False,
                                 elem_id="run-checkpoint-files")
            run_export.export_panel(rid_state)  # Export… (app/pages/run_export.py)
            run_evaluations.evaluate_box(rid_state)
        with gr.Tab("Evaluations", elem_id="tab-evaluations"):
            run_evaluations.evaluations_tab(rid_state)
        with gr.Tab("Status", elem_id="tab-status"):
            status_md = gr.Markdown("", elem_id="run-status")
            traceback_code = gr.Code(value="", language="python", interactive=False, label="Error traceback",
                                     visible=False, elem_id="run-traceback")
    timer = gr.Timer(1.0)
    log_timer = gr.Timer(2.0)
    plot_list = [plots[n] for n in FIGURE_NAMES]

    # -- load / pick --
    def on_pick(rid):
        """The run's id, its cursor (which triggers the redraw), config YAML and log tail."""
        rid = parse_int(rid)
        if rid is None:
            return None, None, "", ""  # nothing picked
        try:
            run = queries().get_run(rid)
        except LookupError:
            return None, None, f"# no run #{rid}", ""
        cfg = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True) if run.config else f"# {run.config_error}"
        return rid, cursor_of(run), cfg, tail_logs(rid, "all")

    def on_load(request: gr.Request):
        """Deep link ?run=ID (else the newest run): fill the picker and draw in one round trip."""
        q = queries()
        runs = q.list_runs(limit=500)
        choices = [(run_label(r), r.id) for r in runs]  # no status: the live badge beside it says it
        want = parse_int((dict(request.query_params) if request else {}).get("run"))
        if want is None and runs:
            want = runs[0].id
        if want is not None and all(c[1] != want for c in choices):
            choices.insert(0, (f"#{want}", want))
        return gr.Dropdown(choices=choices, value=want), *on_pick(want)

    picked = [rid_state, cursor, config_code, logs]
    page.load(on_load, None, [run_pick, *picked], api_visibility="private")
    run_pick.input(on_pick, run_pick, picked, api_visibility="private", show_progress="hidden")

    # -- the 1 s change check --
    def poll(rid, cur):
        new = poll_cursor(rid)
        return gr.skip() if new is None or new == cur else new

    timer.tick(poll, [rid_state, cursor], cursor, api_visibility="private", show_progress="hidden",
               concurrency_limit=None, trigger_mode="always_last")
    live.change(lambda on: (gr.Timer(active=bool(on)), gr.Timer(active=bool(on))), live, [timer, log_timer],
                api_visibility="private")

    # -- rebuild on change --
    def rebuild(rid, cur, norm, shown_token):
        out = render_run(rid, cur, norm, shown_token)
        return out if out is not None else [gr.skip()] * len(rebuild_outputs)

    rebuild_outputs = [*plot_list, header, ckpt_table, ckpt_files, status_md, traceback_code, b_stop, b_sample,
                       b_save, shown]
    cursor.change(rebuild, [rid_state, cursor, normalize, shown], rebuild_outputs, api_visibility="private",
                  show_progress="hidden", trigger_mode="always_last")
    normalize.change(rebuild, [rid_state, cursor, normalize, shown], rebuild_outputs, api_visibility="private",
                     show_progress="hidden", trigger_mode="always_last")

    # -- logs: tail and follow --
    log_timer.tick(tail_logs, [rid_state, log_level], logs, api_visibility="private", show_progress="hidden",
                   concurrency_limit=None, trigger_mode="always_last")
    follow.change(lambda on, live_on: gr.Timer(active=bool(on and live_on)), [follow, live], log_timer,
                  api_visibility="private")
    log_level.change(tail_logs, [rid_state, log_level], logs, api_visibility="private")

    # -- control buttons: set a DB flag and return (the trainer polls it once per step) --
    def _need(rid) -> int:
        if rid is None:
            raise gr.Error("Pick a run first.")
        return int(rid)

    def on_stop(rid):
        return stop_run(_need(rid))

    def on_sample(rid):
        rid = _need(rid)
        ok = queries().request_sample_now(rid)
        return (f'<div class="gg-ok">Run #{rid} will run an eval round at its next step.</div>' if ok
                else f'<div class="gg-warn">Run #{rid} is not active; nothing to sample.</div>')

    def on_save(rid):
        rid = _need(rid)
        ok = queries().request_save_now(rid)
        return (f'<div class="gg-ok">Run #{rid} will save a checkpoint at its next step.</div>' if ok
                else f'<div class="gg-warn">Run #{rid} is not active; nothing to save.</div>')

    b_stop.click(on_stop, rid_state, message, api_name="run_stop")
    b_sample.click(on_sample, rid_state, message, api_name="run_sample_now")
    b_save.click(on_save, rid_state, message, api_name="run_save_now")



"""New run: a form generated from ``RunConfig`` (sections, defaults, help), presets, YAML
upload/download, per-field validation errors, A/B pairs (Flow-GRPO vs GRPO-Guard), and "run as
experiment" (the form as the base config, arms × seeds, matched no-signal controls)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import gradio as gr

from app.common import esc, parse_int, split_tags
from app.plan_view import GPU_CHOICES, plan_html, run_plan
from app.run_form import (
    AUTO,
    EMA_FIELDS,
    FIELDS,
    PRESETS,
    FormField,
    ab_form_configs,
    ab_info,
    after_submit_url,
    config_yaml,
    derived_hints,
    ema_info,
    form_values,
    load_preset,
    read_uploaded_yaml,
    rewards_markdown,
    to_form_value,
    validate,
)
from grpo_guard.config import RunConfig
from grpo_guard.store.db import StoreError
from worker.experiment import submit_pair
from worker.submit import submit_runs

GROUP_TITLES = {"model": "Model", "algorithm": "Algorithm & sampler", "policy": "Policy update",
                "rewards": "Rewards (proxy) & gold", "eval": "Evaluation & checkpoints"}
# Every section starts open: Gradio renders a closed accordion's fields only when it opens, and a
# value typed while such a field mounts was seen to be lost under load.
OPEN_GROUPS = tuple(RunConfig.field_groups())


# ---- submit: worker.submit writes the store, then enqueues; returns at once (STACK.md G7) ----
def _result_html(ids: list[int], warnings: list[str]) -> str:
    links = " and ".join(f'<a href="run?run={i}" target="_self">run #{i}</a>' for i in ids)
    extra = f' · <a href="compare?runs={",".join(map(str, ids))}" target="_self">compare the pair</a>' if len(ids) > 1 else ""
    warn = "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in warnings)
    return f'<div class="gg-ok" id="gg-submitted" data-run-ids="{",".join(map(str, ids))}">Queued {links}{extra}.</div>{warn}'


def _errors_html(errors: dict[str, str]) -> str:
    n = len(errors)
    general = errors.get("", "")
    lines = f"<div>{esc(general)}</div>" if general else ""
    fields = ", ".join(esc(k) for k in errors if k)
    fl = f"<div>Fix the field{'s' if n > 1 else ''} marked in the form: {fields}.</div>" if fields else ""
    return f'<div class="gg-error" id="gg-form-error"><b>Nothing was enqueued.</b>{lines}{fl}</div>'


GROUPS = list(RunConfig.field_groups())


def _submit_experiment(base: dict[str, Any], arms: str, seeds: str, controls: bool, name: str, tags: str,
                       notes: str) -> tuple[Any, ...]:
    """"Run as experiment": validate every arm × seed (+ control) run, store and enqueue them all."""
    from grpo_guard.config import ConfigError
    from grpo_guard.experiments.config import experiment_from_form
    from worker.experiment import submit_experiment

    try:
        exp = experiment_from_form(base, arms, seeds, controls=controls, name=name or "", tags=split_tags(tags),
                                   notes=notes or "")
        done = submit_experiment(exp)
    except ConfigError as e:  # arms.<arm>.<field>: name the arm's field, not a form field
        return _errors_html({"": "; ".join(f"{k}: {m}" if k else m for k, m in e.errors)}), *_error_updates({})
    except (ValueError, LookupError) as e:
        return _errors_html({"": str(e)}), *_error_updates({})
    eid = done.experiment_id
    warn = "".join(f'<div class="gg-warn">{esc(w)}</div>' for w in done.runs.warnings)
    return (f'<div class="gg-ok" id="gg-submitted-experiment" data-experiment-id="{eid}">Queued experiment '
            f'<a href="experiments?experiment={eid}" target="_self">#{eid}</a>: {len(done.runs.ids)} runs.</div>{warn}',
            *_error_updates({}))


def _error_updates(errors: dict[str, str]) -> list[Any]:
    """Per-field error lines (FIELDS order), then one update per section: a section holding an
    error opens, so the message is seen."""
    bad_groups = {f.group for f in FIELDS if f.name in errors}
    return [*[gr.Markdown(value=f"⚠ {errors[f.name]}" if f.name in errors else "", visible=f.name in errors)
              for f in FIELDS],
            *[gr.Accordion(open=True) if g in bad_groups else gr.update() for g in GROUPS]]


# ---- the page ------------------------------------------------------------------------------
def _widget(f: FormField) -> gr.components.Component:
    label, info, elem_id = f.name, f.help, f"f-{f.name}"
    if f.kind == "choice":
        choices = ([(AUTO, AUTO)] if f.auto else []) + [(c, c) for c in f.choices]
        return gr.Dropdown(choices=choices, value=to_form_value(f, f.default), label=label, info=info, elem_id=elem_id)
    if f.kind == "tristate":
        return gr.Dropdown(choices=[AUTO, "true", "false"], value=AUTO, label=label, info=info, elem_id=elem_id)
    if f.kind == "bool":
        return gr.Checkbox(value=bool(f.default), label=label, info=info, elem_id=elem_id)
    if f.kind in ("int", "float") and f.auto:  # a Textbox: gr.Number cannot show "empty = auto"
        return gr.Textbox(value="", label=label, info=info, elem_id=elem_id, lines=1, placeholder=AUTO)
    if f.kind in ("int", "float"):
        return gr.Number(value=to_form_value(f, f.default), label=label, info=info, elem_id=elem_id,
                         precision=0 if f.kind == "int" else None)
    return gr.Textbox(value=to_form_value(f, f.default), label=label, info=info, elem_id=elem_id, lines=1,
                      placeholder="empty: the shipped toy model" if f.name == "model" else None)


with gr.Blocks(title="New run") as page:
    parent_state = gr.State(None)
    gr.Markdown("## New run", elem_id="new-run-title")
    with gr.Row(equal_height=True):
        preset = gr.Dropdown(choices=list(PRESETS), value=None, label="Preset", scale=2, elem_id="preset",
                             info="Fills the form; fields the preset does not set keep their defaults.")
        upload = gr.File(label="Upload YAML", file_types=[".yaml", ".yml"], type="filepath", scale=2, height=90,
                         elem_id="upload-yaml")
        with gr.Column(scale=1, min_width=180):
            export_btn = gr.Button("Export YAML", elem_id="export-yaml")
            download = gr.DownloadButton("Download YAML", visible=False, elem_id="download-yaml")
    with gr.Row():
        run_name = gr.Textbox(label="Run name", placeholder="optional: <algorithm>-<backbone>-<id>", scale=2, elem_id="run-name")
        run_tags = gr.Textbox(label="Tags", placeholder="comma-separated", scale=2, elem_id="run-tags")
        ab = gr.Checkbox(label="A/B: enqueue the algorithm and its pair (Flow-GRPO / GRPO-Guard) as a linked pair",
                         info=ab_info([to_form_value(f, f.default) for f in FIELDS]), value=False, scale=3, elem_id="ab")
    run_notes = gr.Textbox(label="Notes", lines=1, placeholder="optional", elem_id="run-notes")
    with gr.Accordion("Run as experiment: arms × seeds (+ matched no-signal controls)", open=False,
                      elem_id="sec-experiment"):
        gr.Markdown("The form is the base config; each arm overrides it, every arm runs once per seed.")
        with gr.Row():
            exp_arms = gr.Textbox(label="Arms (YAML: one `name: {field: value}` a line)", lines=3, scale=3,
                                  value="flow_grpo: {algorithm: flow_grpo}\ngrpo_guard: {algorithm: grpo_guard}",
                                  elem_id="exp-arms")
            with gr.Column(scale=1, min_width=200):
                exp_seeds = gr.Textbox(label="Seeds", value="0 1 2", elem_id="exp-seeds")
                exp_controls = gr.Checkbox(label="Matched no-signal controls (proxy null_noise)", value=True,
                                           elem_id="exp-controls")
        submit_exp = gr.Button("Validate & enqueue experiment", variant="primary", elem_id="submit-experiment")
    clone_note = gr.Markdown("", visible=False, elem_id="clone-note")

    widgets: list[gr.components.Component] = []
    errors_md: list[gr.Markdown] = []
    by_name: dict[str, gr.components.Component] = {}
    sections: list[gr.Accordion] = []
    for group in GROUPS:
        group_fields = [f for f in FIELDS if f.group == group]
        with gr.Accordion(GROUP_TITLES.get(group, group.title()), open=group in OPEN_GROUPS,
                          elem_id=f"sec-{group}") as section:
            sections.append(section)
            for i in range(0, len(group_fields), 3):
                with gr.Row(equal_height=False):
                    for f in group_fields[i:i + 3]:
                        with gr.Column(min_width=240):
                            w = _widget(f)
                            errors_md.append(gr.Markdown("", visible=False, elem_id=f"err-{f.name}",
                                                         elem_classes=["gg-field-error"]))
                            widgets.append(w)
                            by_name[f.name] = w
            if group == "rewards":  # what `rewards`, `gold` and `reward_options` may name
                with gr.Accordion("Registered rewards (built in, plugins, reward servers)", open=False,
                                  elem_id="reward-list"):
                    gr.Markdown(rewards_markdown(), elem_id="reward-list-table")
    assert [w.elem_id for w in widgets] == [f"f-{f.name}" for f in FIELDS], "widgets must follow FIELDS order"

    banner = gr.HTML("", elem_id="submit-result")
    goto = gr.Textbox(visible=False, elem_id="submit-goto")  # where the browser goes after an enqueue
    with gr.Row():
        submit = gr.Button("Validate & enqueue", variant="primary", elem_id="submit-run", scale=3)
        check = gr.Button("Validate only", elem_id="validate-run", scale=1)
    with gr.Row(equal_height=True):
        plan_gpu = gr.Dropdown(choices=GPU_CHOICES, value="h100", label="Plan GPU memory for", scale=2,
                               elem_id="plan-gpu")
        plan_btn = gr.Button("Plan memory", elem_id="plan-run", scale=1)
    plan_out = gr.HTML("", elem_id="plan-result")

    # -- handlers --
    def _fill(data: dict[str, Any], explicit: set[str] | None = None) -> list[Any]:
        return form_values(data, explicit)

    def on_preset(label: str | None):
        if not label:
            return [gr.update() for _ in FIELDS]
        return _fill(load_preset(label))

    preset_filled = preset.input(on_preset, preset, widgets, api_visibility="private")

    def on_upload(path: str | None):
        if not path:
            return [*[gr.update() for _ in FIELDS], "", *_error_updates({})]
        values, errors = read_uploaded_yaml(path)
        if values is None:
            return [*[gr.update() for _ in FIELDS], _errors_html(errors), *_error_updates({})]
        head = _errors_html(errors) if errors else '<div class="gg-ok">Loaded the YAML into the form.</div>'
        return [*values, head, *_error_updates(errors)]

    upload.upload(on_upload, upload, [*widgets, banner, *errors_md, *sections], api_visibility="private")

    def on_export(*values):
        cfg, _, errors = validate(list(values))
        if cfg is None:
            return gr.DownloadButton(visible=False), _errors_html(errors), *_error_updates(errors)
        d = tempfile.mkdtemp(prefix="gg-yaml-")
        path = os.path.join(d, "run_config.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(config_yaml(cfg))
        return (gr.DownloadButton(value=path, visible=True), '<div class="gg-ok">YAML ready: click "Download YAML".</div>',
                *_error_updates({}))

    export_btn.click(on_export, widgets, [download, banner, *errors_md, *sections], api_visibility="private")

    def on_validate(*values):
        cfg, _, errors = validate(list(values))
        if cfg is None:
            return _errors_html(errors), *_error_updates(errors)
        return (f'<div class="gg-ok">Valid: {esc(cfg.algorithm)} on {esc(cfg.backbone)}, {cfg.epochs} epochs, '
                f"{cfg.samples_per_epoch()} samples per epoch, clip {cfg.clip_range:g}, lr {cfg.learning_rate:g}.</div>",
                *_error_updates({}))

    check.click(on_validate, widgets, [banner, *errors_md, *sections], api_visibility="private")

    def on_plan(gpu: str, *values):
        cfg, _, errors = validate(list(values))
        if cfg is None:
            return plan_html(None, "the form has errors: validate it first"), *_error_updates(errors)
        plan, why = run_plan(cfg, gpu or "h100")
        return plan_html(plan, why), *_error_updates({})

    plan_btn.click(on_plan, [plan_gpu, *widgets], [plan_out, *errors_md, *sections], api_visibility="private")

    def on_submit(name: str, tags: str, notes: str, pair: bool, parent: int | None, *values):
        cfg, data, errors = validate(list(values))
        if cfg is not None and pair:
            configs, errors = ab_form_configs(data)
        elif cfg is not None:
            configs = [(cfg.algorithm, cfg)]
        if errors:
            return _errors_html(errors), "", *_error_updates(errors)
        try:
            send = submit_pair if pair else submit_runs  # an A/B pair is a 2-arm, 1-seed experiment
            done = send(configs, name=name or "", tags=split_tags(tags), notes=notes or "", parent_id=parent)
        except (ValueError, LookupError, StoreError) as e:  # StoreError: e.g. the database's disk is full
            return _errors_html({"": str(e)}), "", *_error_updates({})
        # a warning (broker down: queued, not sent) is worth reading here before leaving the page
        url = "" if done.warnings else after_submit_url(list(done.ids))
        return _result_html(list(done.ids), list(done.warnings)), url, *_error_updates({})

    submit.click(on_submit, [run_name, run_tags, run_notes, ab, parent_state, *widgets],
                 [banner, goto, *errors_md, *sections], api_name="submit_run", concurrency_limit=2).then(
        None, goto, None, js="(url) => { if (url) window.location.assign(url); }")

    def on_submit_experiment(name: str, tags: str, notes: str, arms: str, seeds: str, controls: bool, *values):
        cfg, data, errors = validate(list(values))
        if cfg is None:  # the base config itself: errors under its fields
            return _errors_html(errors), *_error_updates(errors)
        return _submit_experiment(data, arms, seeds, controls, name, tags, notes)

    submit_exp.click(on_submit_experiment, [run_name, run_tags, run_notes, exp_arms, exp_seeds, exp_controls, *widgets],
                     [banner, *errors_md, *sections], api_name="submit_experiment", concurrency_limit=2)

    def on_hints(algorithm: str, backbone: str):
        hints = derived_hints(algorithm, backbone)
        out = []
        for f in FIELDS:
            if not f.auto:
                continue
            h = hints.get(f.name)
            text = f"auto: {h:g}" if isinstance(h, float) else f"auto: {h}"
            if f.kind in ("int", "float"):
                out.append(gr.Textbox(placeholder=text))
            else:
                out.append(gr.Dropdown(choices=[(text, AUTO), *[(c, c) for c in (f.choices or ("true", "false"))]]))
        return out

    def on_ab_info(*values):
        return gr.Checkbox(info=ab_info(list(values)))

    def on_ema_info(*values):  # after which epoch the EMA (what eval samples) first moves
        return gr.Number(info=ema_info(list(values)))

    page.load(on_ema_info, widgets, by_name["ema_every"], api_visibility="private", show_progress="hidden")
    for name in EMA_FIELDS:
        by_name[name].change(on_ema_info, widgets, by_name["ema_every"], api_visibility="private",
                             show_progress="hidden", trigger_mode="always_last")

    auto_widgets = [by_name[f.name] for f in FIELDS if f.auto]
    for src in (by_name["algorithm"], by_name["backbone"]):
        src.change(on_hints, [by_name["algorithm"], by_name["backbone"]], auto_widgets, api_visibility="private",
                   show_progress="hidden", trigger_mode="always_last")
        src.change(on_ab_info, widgets, ab, api_visibility="private", show_progress="hidden",
                   trigger_mode="always_last")
    # a preset may set a field the arms would otherwise differ in (learning_rate, kl_beta) without
    # changing the algorithm, so the list is redrawn after it too
    preset_filled.then(on_ab_info, widgets, ab, api_visibility="private", show_progress="hidden").then(
        on_ema_info, widgets, by_name["ema_every"], api_visibility="private", show_progress="hidden")

    def on_load(request: gr.Request):
        params = dict(request.query_params) if request else {}
        clone = parse_int(params.get("clone"))
        label = params.get("preset")
        keep = [gr.update() for _ in FIELDS]
        if clone is not None:
            from app.common import queries

            try:
                run = queries().get_run(clone)
            except LookupError:
                return (*keep, None, gr.update(), gr.update(), gr.Markdown(f"⚠ no run #{clone} to clone", visible=True),
                        gr.update(), *[gr.update() for _ in auto_widgets])
            explicit = set(run.config_fields_set) if run.config_fields_set else None
            values = form_values(run.config, explicit)
            note = (f"Cloning run #{run.id} **{run.name}** ({run.algorithm}, {run.backbone}). "
                    "The new run records it as its parent.")
            return (*values, run.id, f"{run.name} (clone)"[:200], ", ".join(run.tags), gr.Markdown(note, visible=True),
                    gr.update(), *on_hints(run.config.get("algorithm", "grpo_guard"), run.config.get("backbone", "toy")))
        if label in PRESETS:
            data = load_preset(label)
            return (*form_values(data), None, gr.update(), gr.update(), gr.Markdown(visible=False), label,
                    *on_hints(data.get("algorithm", "grpo_guard"), data.get("backbone", "toy")))
        return (*keep, None, gr.update(), gr.update(), gr.Markdown(visible=False), gr.update(),
                *on_hints(str(RunConfig.model_fields["algorithm"].default), str(RunConfig.model_fields["backbone"].default)))

    page.load(on_load, None, [*widgets, parent_state, run_name, run_tags, clone_note, preset, *auto_widgets],
              api_visibility="private")

__all__ = ["page"]

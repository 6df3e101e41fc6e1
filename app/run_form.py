"""The New-run form as data: one widget per ``RunConfig`` field (kind, choices, help, section),
and the conversions config <-> widget values with per-field errors. Pure: no Gradio, no store.

Derived fields (``None`` in the schema, filled from the algorithm and backbone) show as empty
("auto") unless the user set them, so a config records only what the user chose and changing
the algorithm re-derives the rest; the same rule makes the exported YAML minimal.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from grpo_guard.config import ConfigError, RunConfig, safe_yaml
from grpo_guard.config.validation import validate_run_config
from grpo_guard.experiments.pairing import ab_configs, arm_differences

# app/presets/*.yaml are git symlinks to examples/*.yaml, so a preset is its example by construction;
# `pip install .` copies the files they point to into the wheel (the Dockerfiles copy examples/ first).
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
PRESETS: dict[str, str] = {
    "toy Flow-GRPO": "toy_flow_grpo.yaml",
    "toy GRPO-Guard": "toy_grpo_guard.yaml",
    "SD3.5-M GRPO-Guard": "sd35m_grpo_guard.yaml",
    "SD3.5-M GenEval GRPO-Guard": "sd35m_geneval_grpo_guard.yaml",
    "SD3.5-M PickScore GRPO-Guard": "sd35m_pickscore_grpo_guard.yaml",
    "FLUX.1-dev DanceGRPO-Guard": "flux_dance_grpo_guard.yaml",
}
AUTO = "auto"


# ---- the form model (pure) -----------------------------------------------------------------
@dataclass(frozen=True)
class FormField:
    """How one RunConfig field appears in the form.

    kind: ``choice`` (dropdown), ``bool`` (checkbox), ``tristate`` (auto/true/false),
    ``int`` / ``float`` (number), ``text`` (textbox) or ``yaml`` (lists and maps, flow YAML).
    ``auto``: the field may be left empty and is then derived from algorithm and backbone.
    """

    name: str
    group: str
    kind: str
    choices: tuple[str, ...]
    auto: bool
    default: Any
    help: str


def _strip_none(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def form_fields() -> list[FormField]:
    """Every RunConfig field, in section order, with its widget kind."""
    out = []
    for group, names in RunConfig.field_groups().items():
        for name in names:
            info = RunConfig.model_fields[name]
            ann, optional = _strip_none(info.annotation)
            choices: tuple[str, ...] = ()
            if typing.get_origin(ann) is Literal:
                kind, choices = "choice", tuple(str(a) for a in typing.get_args(ann))
            elif ann is bool:
                kind = "tristate" if optional else "bool"
            elif ann is int:
                kind = "int"
            elif ann is float:
                kind = "float"
            elif ann is str:
                kind = "text"
            else:
                kind = "yaml"
            out.append(FormField(name, group, kind, choices, optional and info.default is None and kind != "text",
                                 info.default, info.description or ""))
    return out


FIELDS: list[FormField] = form_fields()
FIELD_NAMES = [f.name for f in FIELDS]
BY_NAME = {f.name: f for f in FIELDS}


def _yaml_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: a 250 KiB upload fills the form in time
    return yaml.dump(value, Dumper=dumper, default_flow_style=True, sort_keys=False, width=10_000).strip()


def to_form_value(f: FormField, value: Any, explicit: bool = True) -> Any:
    """The widget value showing ``value``; derived fields not given explicitly show 'auto'."""
    if f.auto and (value is None or not explicit):
        return AUTO if f.kind in ("choice", "tristate") else ""
    if f.auto and f.kind in ("int", "float"):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if f.kind == "tristate":
        return "true" if value else "false"
    if f.kind == "choice":
        return str(value)
    if f.kind == "bool":
        return bool(value)
    if f.kind in ("int", "float"):
        return value
    if f.kind == "text":
        return "" if value is None else str(value)
    return _yaml_text(value)


def form_values(data: dict[str, Any] | None = None, explicit: set[str] | None = None) -> list[Any]:
    """Widget values for a config mapping (missing fields get their defaults). ``explicit``:
    the fields the user chose (others that the algorithm derives show 'auto'); None means all
    keys of ``data``."""
    data = data or {}
    chosen = set(data) if explicit is None else explicit
    return [to_form_value(f, data.get(f.name, f.default), f.name in chosen) for f in FIELDS]


def from_form_value(f: FormField, v: Any) -> tuple[bool, Any, str | None]:
    """(include, value, error) for one widget value. Not included: 'auto', or equal to the
    default (so the config records only what the user chose, and derived values follow
    the algorithm)."""
    if f.kind in ("choice", "tristate") and (v is None or v == AUTO):
        return False, None, None
    if f.kind == "tristate":
        value: Any = v == "true" or v is True
    elif f.kind == "choice":
        value = str(v)
    elif f.kind in ("int", "float"):
        if isinstance(v, str):
            v = v.strip()
        if v is None or v == "" or (f.auto and isinstance(v, str) and v.lower() == AUTO):
            return (False, None, None) if f.auto else (False, None, "a value is required")
        try:
            num = float(v)
        except (TypeError, ValueError):
            return False, None, f"not a number: {v!r}"
        value = int(num) if f.kind == "int" and num.is_integer() else (num if isinstance(v, str) else v)
    elif f.kind == "text":
        value = (v or "").strip()
        if not value and f.default is None:
            return False, None, None
    elif f.kind == "yaml":
        text = (v or "").strip()
        if not text:
            return False, None, None
        try:  # the config file's rules: limits, and scalars as typed (no yes/no booleans)
            value = safe_yaml.load_value(text, field=f.name)
        except ConfigError as e:
            return False, None, e.errors[0][1]
    else:
        value = bool(v)
    default = f.default
    if isinstance(default, tuple):
        default = list(default)
    if not f.auto and value == default:
        return False, None, None
    return True, value, None


def collect(values: list[Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Form values -> (config mapping of the chosen fields, widget-level errors)."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f, v in zip(FIELDS, values, strict=True):
        include, value, err = from_form_value(f, v)
        if err:
            errors[f.name] = err
        elif include:
            data[f.name] = value
    return data, errors


def rewards_markdown() -> str:
    """The registered rewards as a Markdown table (the list ``grpo-guard rewards list`` prints:
    built in, plugins, declared reward servers) and any plugin or server that was skipped."""
    from grpo_guard.rewards import PROBLEMS, reward_rows

    def cell(text: str) -> str:
        return str(text).replace("|", "/").replace("\n", " ")

    lines = ["| reward | kind | backbones | options | from |", "|---|---|---|---|---|"]
    for r in reward_rows():
        opts = ", ".join(f"{k}: {t}" for k, t in r["options"].items()) or "—"
        lines.append(f"| `{r['name']}` | `{r['kind']}` | {',&nbsp;'.join(r['backbones'])} | {cell(opts)} | {cell(r['source'])} |")
    lines += [f"\n⚠ {cell(p)}" for p in PROBLEMS]
    return "\n".join(lines)


def field_of(error_key: str) -> str:
    """'rewards.toy_fg_share' -> 'rewards', 'eval_seeds.0' -> 'eval_seeds'; '' stays general."""
    head = error_key.split(".", 1)[0]
    return head if head in FIELD_NAMES else ""


def errors_by_field(e: ConfigError) -> dict[str, str]:
    """A ConfigError's messages keyed by form field ('' for the config as a whole)."""
    out: dict[str, str] = {}
    for key, msg in e.errors:
        fld = field_of(key)
        text = msg if fld == key or not key else f"{key}: {msg}"
        out[fld] = f"{out[fld]}; {text}" if fld in out else text
    return out


def validate(values: list[Any]) -> tuple[RunConfig | None, dict[str, Any], dict[str, str]]:
    """(config or None, chosen mapping, {field or '': message}). The one validation of every
    way in (grpo_guard.config.validation); local paths are judged by their text here, because the
    app need not see the workers' files (docker-compose.yml)."""
    data, errors = collect(values)
    # Every error at once: the schema and the submit checks run on the fields that parsed, and again
    # without each field they reject (it takes its default), so a later stage's errors are not
    # hidden behind an earlier one's. A field keeps its first error; three rounds cover the stages.
    for _ in range(3):
        try:
            cfg = validate_run_config({k: v for k, v in data.items() if k not in errors}, check_paths=False)
        except ConfigError as e:
            new = {k: m for k, m in errors_by_field(e).items() if k not in errors}
            errors.update(new)
            if not any(k in data for k in new):
                break
        else:
            return (cfg, data, {}) if not errors else (None, data, errors)
    return None, data, errors


def ab_form_configs(data: dict[str, Any]) -> tuple[list[tuple[str, RunConfig]], dict[str, str]]:
    """The A/B pair of the chosen fields (``grpo_guard.experiments.pairing.ab_configs``), or ([], errors by
    form field) when an arm is not valid."""
    try:
        return ab_configs(data), {}
    except ConfigError as e:
        return [], {field_of(key): msg for key, msg in e.errors}


def ab_info(values: list[Any]) -> str:
    """The A/B box's explanation for these form values: the arms share every field the user set
    and differ in their algorithms' own defaults, listed (``grpo_guard.experiments.pairing.arm_differences``)."""
    data, _ = collect(values)
    configs, errors = ab_form_configs(data)
    if errors or len(configs) != 2:
        return "The two arms differ in each algorithm's own defaults; fix the form's errors to see which fields."
    (name_a, a), (name_b, b) = configs
    diffs = {k: v for k, v in arm_differences(a, b).items() if k != "algorithm"}
    listed = "; ".join(f"{k} {_brief(va)} vs {_brief(vb)}" for k, (va, vb) in diffs.items())
    return (f"{name_a} vs {name_b}, same seeds and every field you set; they differ in {len(diffs)} "
            f"field{'s' if len(diffs) != 1 else ''}, each algorithm's own defaults: {listed}.")


EMA_FIELDS = ("ema", "ema_every", "epochs", "group_size", "prompts_per_epoch", "train_batch_size",
              "gradient_accumulation_steps", "inner_epochs", "num_gpus")


def ema_info(values: list[Any]) -> str:
    """The ema_every field's hint for these form values: after which epoch the EMA, which every
    eval samples, first moves (RunConfig.first_ema_epoch), and a warning when it never does."""
    base = "Update the EMA every N optimizer steps."
    data, _ = collect(values)
    try:
        cfg = RunConfig.from_dict({k: v for k, v in data.items() if k in EMA_FIELDS})
    except (ConfigError, ValueError, TypeError):
        return base
    first = cfg.first_ema_epoch()
    if first is None:
        return base + " The EMA is off: eval samples the trained weights."
    hint = (f"{base} Here: {cfg.optimizer_steps_per_epoch()} optimizer step(s) per epoch, so the EMA (what every "
            f"eval samples) first moves after epoch {first}.")
    return hint + (f" ⚠ That is beyond epochs={cfg.epochs}: every eval would sample the base model."
                   if first > cfg.epochs else "")


def _brief(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def after_submit_url(ids: Sequence[int]) -> str:
    """Where the browser goes once runs are enqueued: the run's page, or a pair's Compare page."""
    ids = [int(i) for i in ids]
    if len(ids) == 1:
        return f"run?run={ids[0]}"
    return "compare?runs=" + ",".join(map(str, ids)) if ids else ""


def load_preset(label: str) -> dict[str, Any]:
    """The preset's mapping, read from its file (the example of the same name)."""
    with open(os.path.join(PRESET_DIR, PRESETS[label]), encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def derived_hints(algorithm: str, backbone: str) -> dict[str, Any]:
    """What each 'auto' field resolves to for this algorithm and backbone."""
    data: dict[str, Any] = {"algorithm": algorithm, "backbone": backbone}
    if backbone != "toy":
        data["model"] = "placeholder"
    try:
        cfg = RunConfig.from_dict(data)
    except ConfigError:
        return {}
    return {f.name: getattr(cfg, f.name) for f in FIELDS if f.auto}


def config_yaml(cfg: RunConfig) -> str:
    """The fields the user chose, as YAML (the rest take defaults: `grpo-guard config fields`)."""
    chosen = cfg.to_dict()
    body = {k: chosen[k] for k in chosen if k in cfg.fields_set()}
    head = "# GRPO-Guard Studio run config. Fields left out take their defaults (grpo-guard config fields).\n"
    return head + (yaml.safe_dump(body, sort_keys=False, allow_unicode=True) if body else "{}\n")


def read_uploaded_yaml(path: str) -> tuple[list[Any] | None, dict[str, str]]:
    """(form values or None, errors) for an uploaded YAML file. The file is refused by size
    before it is read and parsed with the config file's limits (grpo_guard.config.safe_yaml), so an
    upload bomb costs no more than a normal config; unreadable text or a non-mapping gives None
    and a general error; known keys fill the form and are validated as the CLI validates them
    (errors by field); unknown keys are reported, never silently dropped."""
    try:
        data = safe_yaml.load_mapping(safe_yaml.read_config_file(path))
    except ConfigError as e:  # the server's temporary path means nothing to the user
        return None, {"": e.errors[0][1].replace(f"config file {path}", "the uploaded file")}
    unknown = [safe_yaml.preview(k, 40) if not isinstance(k, str) else k[:40] for k in data if k not in FIELD_NAMES]
    known = {k: v for k, v in data.items() if k in FIELD_NAMES}
    try:
        cfg = validate_run_config(known, check_paths=False)
    except ConfigError as e:
        cfg, errors = None, errors_by_field(e)
    else:
        errors = {}
    if cfg is not None:  # the validated values: each fits its widget ("5" becomes 5)
        values = form_values({k: getattr(cfg, k) for k in known}, set(known))
        _, _, errors = validate(values)
    else:  # a value its widget cannot hold stays out of the form, with the error at the field
        fits = {k: v for k, v in known.items() if widget_can_show(BY_NAME[k], v)}
        for k in known.keys() - fits.keys():
            errors.setdefault(k, f"{safe_yaml.preview(known[k])} cannot be shown in this field")
        values = form_values(fits)
    if unknown:
        errors[""] = "unknown keys ignored: " + ", ".join(unknown[:20]) + (", …" if len(unknown) > 20 else "")
    return values, errors


MAX_SHOWN_ENTRIES = 10_000


def widget_can_show(f: FormField, value: Any) -> bool:
    """Whether ``value`` can be put in ``f``'s widget as it is (a number box holds a finite
    number, a dropdown one of its choices, a checkbox a bool); an uploaded file may hold anything."""
    if f.auto and f.kind in ("int", "float", "choice", "tristate") and value is None:
        return True
    if f.kind in ("int", "float"):
        return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                and abs(value) < 1e15)
    if f.kind == "choice":
        return isinstance(value, str) and value in f.choices
    if f.kind in ("bool", "tristate"):
        return isinstance(value, bool)
    if f.kind == "text":
        return value is None or isinstance(value, str)
    # a rejected list or mapping of tens of thousands of entries is not worth rendering into a text box
    # (the YAML dump alone took ~0.5 s of the 2 s a rejection may cost); its error says what is wrong
    return not isinstance(value, (list, dict)) or len(value) <= MAX_SHOWN_ENTRIES

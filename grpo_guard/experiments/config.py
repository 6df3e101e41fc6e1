"""Experiments: a base run config, named arms (each a set of overrides), seeds and, optionally,
a matched no-signal control per arm, as one object with a YAML round trip.

An experiment expands into ordinary runs, one per (arm, seed) and, with ``controls: true``, one
per (``<arm>/control``, seed). A control is its arm with the proxy replaced by ``null_noise``
(weight 1; the arm's own rewards stay at weight 0, so they are still scored and the arm's proxy
can be read off the control too) and everything else identical, gold included: what gold the
control loses is what optimisation noise alone costs.

Every expanded run config is validated by :func:`validate_run` before anything is stored; an
error names where it came from (``arms.<name>.<field>``, ``base.<field>``). Imports no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from grpo_guard.config import ConfigError, RunConfig, parse_overrides, paths, safe_yaml
from grpo_guard.config.validation import validate_run_config

CONTROL_SUFFIX = "/control"
CONTROL_REWARD = "null_noise"
MAX_ARMS = 32
MAX_SEEDS = 64
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,59}$")


def validate_run(data: Mapping[str, Any], *, config_dir: str | None = None) -> RunConfig:
    """Every expanded run config goes through the one validation of run configs
    (:func:`grpo_guard.config.validation.validate_run_config`: schema, cross-field rules, registered
    reward and gold names, prompt files confined to the allowed roots). A prompt file found beside
    the experiment file is read now, so the stored run holds its prompts."""
    cfg = validate_run_config(dict(data), config_dir=config_dir, check_paths=False)
    return cfg.with_prompt_files_inlined(config_dir=config_dir, missing_ok=True) if config_dir else cfg


def _load_mapping(text: str, what: str, field: str = "") -> dict[str, Any]:
    """YAML text -> mapping through the house's safe loader (size, depth, alias and number
    limits; YAML 1.2 scalars); ConfigError naming ``field`` otherwise."""
    try:
        return safe_yaml.load_mapping(text)
    except ConfigError as e:
        raise ConfigError([(field or f, m.replace("the YAML", f"the {what}")) for f, m in e.errors]) from None


def _confined_base(raw: str, config_dir: str | None) -> str:
    """The run config file ``base`` names, held to the rules of prompt files
    (:func:`grpo_guard.config.paths.confine`: inside the experiment file's directory, GG_PROMPTS_DIR or
    the built-in roots; no '..', hidden parts or '~'; a regular file)."""
    if config_dir is None and not os.path.isabs(raw.strip()):
        raise ConfigError([("base", f"{raw!r} names a file, but this experiment has no directory to find it in; "
                                    "give the base config inline")])
    return paths.confine("base", raw, config_dir=config_dir)


def _read_base(raw: str, config_dir: str | None) -> dict[str, Any]:
    path = _confined_base(raw.strip(), config_dir)
    try:
        text = safe_yaml.read_config_file(path)
    except ConfigError as e:
        raise ConfigError([("base", m) for _, m in e.errors]) from None
    return _load_mapping(text, "base config", "base")


@dataclass(frozen=True)
class ExpandedRun:
    """One run of an experiment: its arm label (``<arm>`` or ``<arm>/control``), seed and config."""

    arm: str
    seed: int
    config: RunConfig

    @property
    def is_control(self) -> bool:
        return self.arm.endswith(CONTROL_SUFFIX)

    @property
    def label(self) -> str:
        return f"{self.arm} seed {self.seed}"


def control_arm(arm: str) -> str:
    """The label of ``arm``'s matched no-signal control."""
    return f"{arm}{CONTROL_SUFFIX}"


def arm_of_control(label: str) -> str | None:
    """The arm a control label belongs to, or None when ``label`` is not a control."""
    return label[: -len(CONTROL_SUFFIX)] if label.endswith(CONTROL_SUFFIX) else None


def control_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that turn a run config into its no-signal control: proxy ``null_noise``
    with weight 1, the config's own rewards kept at weight 0 (scored, never optimised)."""
    rewards = {k: 0.0 for k in config.get("rewards", {}) if k != CONTROL_REWARD}
    return {"rewards": {CONTROL_REWARD: 1.0, **rewards}}


class ExperimentConfig(BaseModel):
    """Arms × seeds (+ matched no-signal controls) over one base run config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("", max_length=150, description="The experiment's name; its runs are called 'NAME [arm seed N]'.")
    tags: list[str] = Field([], description="Tags given to the experiment and each of its runs.")
    notes: str = Field("", max_length=10_000, description="Free text.")
    base: dict[str, Any] | str = Field({}, description="The base run config: a mapping of RunConfig fields, or "
                                                        "the path of a run config file beside the experiment file.")
    arms: dict[str, dict[str, Any]] = Field(..., description="Named arms: each a mapping of RunConfig overrides.")
    seeds: list[int] = Field([0], description="Seeds; every arm runs once per seed (the runs' `seed`).")
    controls: bool = Field(False, description="Add, per arm, a matched `<arm>/control` whose proxy is null_noise.")
    _config_dir: str | None = PrivateAttr(None)

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not arms:
            raise ValueError("an experiment needs at least one arm")
        if len(arms) > MAX_ARMS:
            raise ValueError(f"at most {MAX_ARMS} arms, got {len(arms)}")
        for name in arms:
            if not _ARM_NAME.match(str(name)):
                raise ValueError(f"arm name {str(name)[:40]!r} must be letters, digits, '_', '.' or '-' "
                                 "(at most 60, no '/')")
        return arms

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("at least one seed")
        if len(seeds) > MAX_SEEDS:
            raise ValueError(f"at most {MAX_SEEDS} seeds, got {len(seeds)}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        if any(s < 0 or s > 2**31 - 1 for s in seeds):
            raise ValueError("seeds are integers in [0, 2^31 - 1]")
        return seeds

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, config_dir: str | None = None) -> ExperimentConfig:
        """Validate the experiment and every run it expands to; ConfigError lists each problem
        with its place (``arms.guard.clip_range``, ``base.epochs``, ``seeds``)."""
        if not isinstance(data, Mapping):
            raise ConfigError([("", f"an experiment must be a mapping, got {type(data).__name__}")])
        try:
            exp = cls.model_validate(dict(data))
        except ValidationError as e:
            raise ConfigError([(".".join(str(p) for p in err["loc"]) or "",
                                "unknown key" if err["type"] == "extra_forbidden"
                                else err["msg"].removeprefix("Value error, ")) for err in e.errors()]) from None
        if isinstance(exp.base, str):
            exp = exp.model_copy(update={"base": _read_base(exp.base, config_dir)})
        exp._config_dir = config_dir
        exp.expand()  # every run valid, or ConfigError now
        return exp

    @classmethod
    def from_yaml(cls, text: str, overrides: Iterable[str] = (), *, seeds: Sequence[int] | None = None,
                  config_dir: str | None = None) -> ExperimentConfig:
        """Parse an experiment file's text; ``overrides`` (``key=value``, as ``--set``) apply to
        the base config of every arm, ``seeds`` replaces the file's seeds."""
        data = _load_mapping(text, "experiment file")
        over = parse_overrides(overrides)
        if over:
            base = data.get("base", {})
            if isinstance(base, str):  # read now so the overrides have a mapping to land in
                base = _read_base(base, config_dir)
            if not isinstance(base, dict):
                raise ConfigError([("base", "must be a mapping of run config fields or a file path")])
            data["base"] = {**base, **over}
        if seeds is not None:
            data["seeds"] = list(seeds)
        return cls.from_dict(data, config_dir=config_dir)

    @classmethod
    def from_file(cls, path: str, overrides: Iterable[str] = (), *,
                  seeds: Sequence[int] | None = None) -> ExperimentConfig:
        return cls.from_yaml(safe_yaml.read_config_file(path), overrides, seeds=seeds,
                             config_dir=os.path.dirname(os.path.abspath(path)))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return safe_yaml.dump(self.to_dict(), sort_keys=False, allow_unicode=False)

    # ---- expansion ---------------------------------------------------------------------------
    def arm_labels(self) -> list[str]:
        """Every arm label, each arm followed by its control when controls are on."""
        out: list[str] = []
        for arm in self.arms:
            out += [arm, control_arm(arm)] if self.controls else [arm]
        return out

    def arm_config(self, label: str) -> dict[str, Any]:
        """The run config mapping (before the seed) of an arm label."""
        arm = arm_of_control(label) or label
        if arm not in self.arms:
            raise KeyError(f"no arm {label!r}; arms: {', '.join(self.arm_labels())}")
        base = self.base if isinstance(self.base, dict) else {}
        data = {**base, **self.arms[arm]}
        if arm != label:
            data.update(control_overrides(data))
        return data

    def expand(self) -> list[ExpandedRun]:
        """Every run, seed-major (all arms of seed 0 first, so a partial experiment is balanced).
        ConfigError names each failing field as ``arms.<arm>.<field>`` (a field the arm did not
        set is reported under ``base.<field>``)."""
        errors: list[tuple[str, str]] = []
        configs: dict[str, RunConfig] = {}
        for label in self.arm_labels():
            arm = arm_of_control(label) or label
            try:
                configs[label] = validate_run(self.arm_config(label), config_dir=self._config_dir)
            except ConfigError as e:
                for field, msg in e.errors:
                    top = field.split(".", 1)[0]
                    where = f"arms.{arm}" if top in self.arms[arm] or top == "rewards" and arm != label else "base"
                    if arm != label:
                        msg = f"[{label}] {msg}"
                    item = (f"{where}.{field}" if field else where, msg)
                    if item not in errors:
                        errors.append(item)
        if errors:
            raise ConfigError(errors)
        return [ExpandedRun(label, seed, configs[label].with_overrides({"seed": seed}))
                for seed in self.seeds for label in self.arm_labels()]



def experiment_from_form(base: Mapping[str, Any], arms_text: str, seeds_text: str, *, controls: bool,
                         name: str = "", tags: Sequence[str] = (), notes: str = "") -> ExperimentConfig:
    """The New-run page's "run as experiment": the form's run config as the base, arms as YAML
    text (``name: {field: value, ...}`` a line), seeds as text ("0 1 2" or "0, 1, 2").
    ConfigError names ``arms`` / ``seeds`` for text that cannot be read."""
    arms = _load_mapping(arms_text or "", "arms text", "arms")
    if not arms:
        raise ConfigError([("arms", "give at least one arm, e.g. `flow: {algorithm: flow_grpo}`")])
    try:
        seeds = [int(s) for s in (seeds_text or "").replace(",", " ").split()]
    except ValueError:
        raise ConfigError([("seeds", f"seeds are integers separated by spaces or commas, got {seeds_text!r}")]) from None
    return ExperimentConfig.from_dict({"name": name or "", "tags": list(tags), "notes": notes or "", "base": dict(base),
                                       "arms": arms, "seeds": seeds or [0], "controls": bool(controls)})

"""Whether a valid run config may be queued here: registry names, prompt files inside the
allowed roots, local model paths; prompt files read in for ``submit``; the train/eval overlap
warning. Imports no torch (the app uses it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from grpo_guard.config import paths, safe_yaml
from grpo_guard.config.errors import ConfigError

if TYPE_CHECKING:
    from grpo_guard.config.run_config import RunConfig


def submit_errors(cfg: RunConfig, *, check_paths: bool = False, config_dir: str | None = None) -> list[tuple[str, str]]:
    """What stops this config from being queued, beyond its own validity: reward and gold
    names missing from ``grpo_guard.rewards.REGISTRY``; prompt files refused by
    :mod:`grpo_guard.config.paths` (outside the allowed roots of ``config_dir``, GG_PROMPTS_DIR and
    the built-in sets, a symlink out of its root, not a regular file, too big); and, with
    ``check_paths``, a prompt file no root holds or a local-looking ``model`` path (starting
    with /, ./, ../ or ~) that does not exist here. Hub ids are never checked (no network at
    submit time)."""
    from grpo_guard.prompts import resolve_prompts
    from grpo_guard.rewards import REGISTRY

    known = ", ".join(sorted(REGISTRY))
    errors: list[tuple[str, str]] = []
    for k in cfg.rewards:
        if k not in REGISTRY:
            errors.append((f"rewards.{k[:100]}", f"unknown reward; registered: {known}"))
    for g in cfg.gold:
        if g not in REGISTRY:
            errors.append(("gold", f"unknown evaluator {safe_yaml.preview(g)}; registered: {known}"))
    for name in ("prompts", "eval_prompts"):
        spec = getattr(cfg, name)
        path = prompt_file_path(spec)
        if path is None:
            continue
        try:
            if check_paths:  # read it as submit and the worker will: limits, UTF-8, some prompts
                resolve_prompts(spec, field=name, confined=True, config_dir=config_dir)
            else:
                paths.find(name, path, config_dir=config_dir)
        except ConfigError as e:
            errors.extend(e.errors)
        except ValueError as e:
            errors.append((name, str(e)))
    if check_paths and cfg.model and cfg.model.strip().startswith(("/", "./", "../", "~")):
        path = os.path.expanduser(cfg.model.strip())
        if not os.path.isdir(path):
            errors.append(("model", f"no model directory at {path[:200]}; give an existing local directory "
                                    "(as the workers see it) or a hub id such as stabilityai/stable-diffusion-3.5-medium"))
    return errors

def with_prompt_files_inlined(cfg: RunConfig, *, config_dir: str | None = None, missing_ok: bool = False) -> RunConfig:
    """This config with each ``file:PATH`` / ``geneval:file:PATH`` prompt spec replaced by the
    file's prompts, read inside the allowed roots (:mod:`grpo_guard.config.paths`): ``grpo-guard
    submit`` stores what the submitter's file holds, and a worker trains on what its confined
    read gave. With ``missing_ok`` a file no root holds here stays a spec (the workers resolve
    it in their own roots). ConfigError names the field if the file is refused or unreadable."""
    from grpo_guard.prompts import prompt_to_item, resolve_prompts

    changes: dict[str, Any] = {}
    for name in ("prompts", "eval_prompts"):
        spec = getattr(cfg, name)
        path = prompt_file_path(spec)
        if path is not None:
            if missing_ok and paths.find(name, path, config_dir=config_dir) is None:
                continue
            try:  # GenEval metadata goes along as {prompt, tag, include, exclude} items
                changes[name] = [prompt_to_item(p) for p in
                                 resolve_prompts(spec, field=name, confined=True, config_dir=config_dir)]
            except ValueError as e:
                raise ConfigError([(name, str(e))]) from None
    return cfg.with_overrides(changes) if changes else cfg

def prompt_overlap_warning(cfg: RunConfig) -> str | None:
    """One sentence when the training and eval prompts share prompt texts (the eval then
    measures memorisation, not generalisation), else None; also None when a set cannot be
    read here (that is an error for validation, not a warning)."""
    if isinstance(cfg.prompts, str) and cfg.prompts.strip().startswith("hf:") \
            or isinstance(cfg.eval_prompts, str) and cfg.eval_prompts.strip().startswith("hf:"):
        return None  # a hub dataset is read by the worker; no network here
    try:
        train, held = cfg.resolved_prompts()
    except ConfigError:
        return None
    shared = set(map(str, held)) & set(map(str, train))
    if not shared:
        return None
    example = min(shared)
    return (f"{len(shared)} of the {len(set(map(str, held)))} eval prompts are also training prompts "
            f"(e.g. {example!r}): the eval figures measure memorisation, not held-out quality.")


def prompt_file_problem(spec: Any) -> str | None:
    """Why a queued run may not read the prompt file ``spec`` names (``file:`` or
    ``geneval:file:``), judged from its text (:func:`grpo_guard.config.paths.spec_problem`), else None."""
    path = prompt_file_path(spec)
    return None if path is None else paths.spec_problem("prompts", path)


def prompt_file_path(spec: Any) -> str | None:
    """The path a ``file:PATH`` or ``geneval:file:PATH`` prompt spec names, else None."""
    if not isinstance(spec, str) or not spec.strip().startswith(("file:", "geneval:file:")):
        return None
    return spec.strip().split("file:", 1)[1]

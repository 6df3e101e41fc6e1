"""The one validation of a run config, shared by every way in so they cannot disagree:
``grpo-guard config validate``, ``grpo-guard submit``, the New-run form and its YAML upload,
and the worker's load of a stored config.

Imports no torch (the app uses it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from grpo_guard.config import safe_yaml
from grpo_guard.config.errors import ConfigError
from grpo_guard.config.run_config import RunConfig
from grpo_guard.config.safe_yaml import apply_overrides, parse_overrides

__all__ = ["ConfigError", "validate_run_config"]


def validate_run_config(source: str | os.PathLike[str] | Mapping[Any, Any] | RunConfig,
                        overrides: Iterable[str] = (), *, config_dir: str | None = None,
                        check_paths: bool = True) -> RunConfig:
    """A validated RunConfig, or ConfigError listing (field, message) pairs.

    ``source``: a config file path (read with the limits of :mod:`grpo_guard.config.safe_yaml`; its
    directory becomes ``config_dir``), a mapping (the form, a stored row) or a RunConfig.
    ``overrides``: ``key=value`` strings as for ``--set``. Checked: the schema and its
    cross-field rules, registered reward and gold names, prompt files inside the allowed roots
    (:mod:`grpo_guard.config.paths`; on the filesystem with ``check_paths`` or a ``config_dir``, else by
    their text), and with ``check_paths`` a local ``model`` directory that exists."""
    items = list(overrides)
    if isinstance(source, RunConfig):
        cfg = source.with_overrides(parse_overrides(items)) if items else source
    elif isinstance(source, Mapping):
        cfg = RunConfig.from_dict(apply_overrides(dict(source), parse_overrides(items)))
    else:
        path = os.fspath(source)
        text = safe_yaml.read_config_file(path)
        if config_dir is None:
            config_dir = os.path.dirname(os.path.abspath(path))
        cfg = RunConfig.from_yaml(text, items)
    cfg.check_submittable(check_paths=check_paths, config_dir=config_dir)
    return cfg

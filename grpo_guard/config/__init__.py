"""Run configurations: `RunConfig` (every knob of a run), its errors, and how untrusted text
becomes one — YAML parsed with limits (``safe_yaml``), file paths confined (``paths``), one
validation for every way in (``validation``). Imports no torch: the app uses this package."""

from grpo_guard.config.errors import ConfigError
from grpo_guard.config.run_config import (
    ALGORITHM_DEFAULTS,
    ALGORITHMS,
    BACKBONE_DEFAULTS,
    BACKBONES,
    RunConfig,
    _format_errors,
    prompt_file_path,
    prompt_file_problem,
)
from grpo_guard.config.safe_yaml import apply_overrides, parse_overrides

__all__ = ["ALGORITHMS", "ALGORITHM_DEFAULTS", "BACKBONES", "BACKBONE_DEFAULTS", "ConfigError", "RunConfig",
           "_format_errors", "apply_overrides", "parse_overrides", "prompt_file_path", "prompt_file_problem"]

"""Backbone adapters: toy, sd3, flux — one small interface (``grpo_guard.models.base.Backbone``).

``build_backbone(config)`` picks the adapter by ``config.backbone``; adapters import torch and
diffusers, so this package is imported only in workers and the CLI, never by the app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpo_guard.config import RunConfig
    from grpo_guard.models.base import Backbone

ADAPTERS = {
    "toy": "grpo_guard.models.toy:ToyBackbone",
    "sd3": "grpo_guard.models.sd3:SD3Backbone",
    "flux": "grpo_guard.models.flux:FluxBackbone",
}


def build_backbone(config: RunConfig, device: str | None = None) -> Backbone:
    module, _, attr = ADAPTERS[config.backbone].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    return cls.from_config(config, device=device)

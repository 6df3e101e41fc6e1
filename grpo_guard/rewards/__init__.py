"""Reward and evaluator registry.

A reward scores decoded images: ``reward(images, prompts) -> np.ndarray`` of shape (B,), where
``images`` is uint8 (B, H, W, 3) and ``prompts`` a list of B strings. Each entry names the module
that builds it, so this registry (and config validation, and the app) loads no torch or model
weights until a reward is actually built. Rewards are chosen from this registry by name only:
a run config can never make a worker import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class RewardSpec:
    name: str
    target: str  # "package.module:factory"; factory(**options) -> Reward
    kind: Literal["proxy", "gold", "any"]
    backbones: tuple[str, ...]  # backbones it makes sense for ("toy", "sd3", "flux")
    help: str


REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, target: str, kind: Literal["proxy", "gold", "any"], help: str,
             backbones: tuple[str, ...] = ("toy", "sd3", "flux")) -> None:
    REGISTRY[name] = RewardSpec(name, target, kind, backbones, help)


def available() -> list[str]:
    return sorted(REGISTRY)


def build_reward(name: str, **options: Any) -> Reward:
    """Instantiate a registered reward. Raises KeyError with the list of known names."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(available())}")
    module, _, attr = spec.target.partition(":")
    factory: Callable[..., Reward] = getattr(importlib.import_module(module), attr)
    return factory(**options)


# ---- the registry ---------------------------------------------------------------------------
# Entries are added next to their implementation's module path; keep this list in one place so
# that `grpo-guard config fields` and the New-run form can list them without importing anything.

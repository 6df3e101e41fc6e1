"""The registry's core: what an entry is and the dict that holds them (kept apart from
``grpo_guard/rewards/__init__.py`` so the plugin and server loaders can register entries without an
import circle). Standard library and numpy only: config validation and the app read it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray: ...


# The types a run config may give a reward option (``reward_options: {name: {option: value}}``).
OPTION_TYPES = ("str", "int", "float", "fp32|fp16", "flow_grpo|partial|strict", "generate|logits")


@dataclass(frozen=True)
class RewardSpec:
    """One registry entry (its name is the REGISTRY key; what it measures is the comment above
    its ``register`` call)."""

    target: str  # "package.module:factory"; factory(**options) -> Reward
    kind: Literal["proxy", "gold", "any"]
    backbones: tuple[str, ...]  # backbones it makes sense for ("toy", "sd3", "flux")
    # options a run config may pass to the factory: (name, type in OPTION_TYPES). Options that
    # only code can pass (a replacement GenEval detector callable) are deliberately not listed.
    options: tuple[tuple[str, str], ...] = ()
    # where the entry comes from: "grpo-guard" (built in), "plugin <distribution> <version>",
    # or "server <url>" (an operator-declared reward server)
    source: str = "grpo-guard"
    server: Any = None  # grpo_guard.rewards.servers.ServerSpec of a remote reward, else None
    description: str = ""  # one line for `grpo-guard rewards list` and the New-run form


KINDS = ("proxy", "gold", "any")
BACKBONES = ("toy", "sd3", "flux")


class _Registry(dict):
    """name -> RewardSpec. Reading it the first time loads the plugins and the declared reward
    servers (:func:`load_extras`), so every reader, however it looks (``in``, ``[]``, ``get``,
    iteration), sees the same list."""

    def _ready(self) -> None:
        if not _EXTRAS["loaded"] and _EXTRAS["loader"] is not None:
            _EXTRAS["loader"]()

    def __getitem__(self, key: str) -> RewardSpec:
        self._ready()
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._ready()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self._ready()
        return super().__iter__()

    def __len__(self) -> int:
        self._ready()
        return super().__len__()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self._ready()
        return super().get(key, default)

    def items(self):  # type: ignore[override]
        self._ready()
        return super().items()

    def keys(self):  # type: ignore[override]
        self._ready()
        return super().keys()

    def values(self):  # type: ignore[override]
        self._ready()
        return super().values()


REGISTRY: dict[str, RewardSpec] = _Registry()
BUILTIN: set[str] = set()  # the names registered by this file (filled below)
# Problems met while loading plugins and servers: one sentence each (`grpo-guard rewards list` shows them).
PROBLEMS: list[str] = []
# set by grpo_guard/rewards/__init__.py: "loader" joins the plugins and servers on the first read
_EXTRAS: dict[str, Any] = {"loaded": False, "loading": False, "lock": threading.RLock(), "loader": None}


def register(name: str, target: str, kind: Literal["proxy", "gold", "any"], *,
             backbones: tuple[str, ...] = BACKBONES, options: tuple[tuple[str, str], ...] = (),
             source: str = "grpo-guard", server: Any = None, description: str = "") -> None:
    dict.__setitem__(REGISTRY, name, RewardSpec(target, kind, tuple(backbones), tuple(options), source, server,
                                                description))



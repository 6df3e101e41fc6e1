"""Rewards from installed packages: entry points in the group ``grpo_guard.rewards``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."grpo_guard.rewards"]
    brightness = "my_rewards:brightness"     # name = "module:factory"

and marks the factory with its registry fields (the same as :func:`grpo_guard.rewards.register`'s;
without the mark: kind ``any``, every backbone, no options)::

    from grpo_guard.rewards import reward_plugin

    @reward_plugin(kind="proxy", backbones=("toy",), options=(("scale", "float"),))
    def brightness(scale: float = 1.0): ...   # -> reward(images, prompts) -> (B,) float

Reading the fields imports the module the entry point names, in every process that reads the
registry (the app's form and validation too): keep that module light (numpy at most) and import
torch or model weights inside the factory, as the built-in rewards do. The app warns, naming the
plugin, when loading one pulled torch in.

A plugin that fails to import, names no callable, or declares bad fields is skipped with one
warning naming it (and its distribution); a plugin cannot replace a built-in reward or a name
another plugin took first. Run configs still name the reward only, never the module.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

GROUP = "grpo_guard.rewards"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")  # the run config's reward-name rule
log = logging.getLogger("grpo_guard.rewards")


def _fields(obj: Any) -> dict[str, Any]:
    """The registry fields a factory was marked with, checked; ValueError says what is wrong."""
    from grpo_guard.rewards.registry import BACKBONES, KINDS, OPTION_TYPES

    raw = getattr(obj, "grpo_guard_reward", None) or {}
    if not isinstance(raw, dict):
        raise ValueError("its grpo_guard_reward attribute is not a mapping (use @reward_plugin(...))")
    kind = raw.get("kind", "any")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    backbones = tuple(raw.get("backbones", BACKBONES))
    if not backbones or any(b not in BACKBONES for b in backbones):
        raise ValueError(f"backbones must be some of {', '.join(BACKBONES)}, got {list(backbones)!r}")
    options = []
    for opt in raw.get("options", ()):
        if not (isinstance(opt, (tuple, list)) and len(opt) == 2 and isinstance(opt[0], str)
                and NAME.match(opt[0]) and opt[1] in OPTION_TYPES):
            raise ValueError(f"option {opt!r} is not a (name, type) pair with a type in {', '.join(OPTION_TYPES)}")
        options.append((opt[0], opt[1]))
    return {"kind": kind, "backbones": backbones, "options": tuple(options),
            "description": str(raw.get("description", ""))[:200]}


def entry_points() -> list[Any]:
    """The installed entry points of the group (reads package metadata; imports none of them)."""
    from importlib.metadata import entry_points as eps

    return sorted(eps(group=GROUP), key=lambda e: e.name)


def register_plugins() -> list[str]:
    """Register every plugin reward; returns one sentence per plugin skipped (also logged)."""
    from grpo_guard.rewards.registry import REGISTRY, register

    problems: list[str] = []
    for ep in entry_points():
        dist = getattr(ep, "dist", None)
        source = f"plugin {dist.name} {dist.version}" if dist is not None else "plugin"
        who = f"reward plugin {ep.name!r} ({ep.value}, from {source.removeprefix('plugin ')})"
        if not NAME.match(ep.name):
            problems.append(f"{who} skipped: the name is not a reward name (letters, digits, '_' and '-')")
            continue
        if dict.__contains__(REGISTRY, ep.name):
            taken = dict.__getitem__(REGISTRY, ep.name).source
            problems.append(f"{who} skipped: the name is taken by {taken}")
            continue
        had_torch = "torch" in sys.modules
        try:
            factory = ep.load()
            if not callable(factory):
                raise ValueError(f"{ep.value} is not callable")
            fields = _fields(factory)
        except (Exception, SystemExit) as e:  # a broken plugin must not take the app or the worker down
            problems.append(f"{who} skipped: {type(e).__name__}: {str(e).strip()[:300]}")
            continue
        if not had_torch and "torch" in sys.modules:
            log.warning("%s imports torch when its module loads; import it inside the factory so the app stays "
                        "light", who)
        register(ep.name, ep.value, fields["kind"], backbones=fields["backbones"], options=fields["options"],
                 source=source, description=fields["description"])
    for p in problems:
        log.warning("%s", p)
    return problems

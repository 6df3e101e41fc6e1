"""The toy world's vocabulary, prompts and splits. Pure Python: imports no torch or numpy.

Prompts have the form ``"a red circle on a blue background"``: one of :data:`SHAPES`, a
foreground colour and a different background colour from :data:`PALETTE` (8 × 3 × 7 = 168
combinations). About 15 % of the combinations form the held-out split: they are never rendered
during pretraining, so sampling them measures compositional generalisation. Each held-out
combination's shape, colours and (fg, shape) pair all appear in training; only the triple is new.

Named prompt sets (used by ``RunConfig.prompts`` / ``eval_prompts``) are resolved by
:func:`resolve_prompts`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# name -> RGB. Colours are far apart so that the nearest-palette classifier is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_PROMPT_RE = re.compile(r"^\s*an?\s+(\w+)\s+(\w+)\s+on\s+an?\s+(\w+)\s+background\s*\.?\s*$", re.IGNORECASE)


def make_prompt(fg: str, shape: str, bg: str) -> str:
    return f"a {fg} {shape} on a {bg} background"


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """``"a red circle on a blue background"`` -> ``("red", "circle", "blue")``.

    Raises ``ValueError`` naming the prompt if it is not a toy-world prompt."""
    m = _PROMPT_RE.match(prompt)
    if m:
        fg, shape, bg = (g.lower() for g in m.groups())
        if fg in PALETTE and bg in PALETTE and shape in SHAPES and fg != bg:
            return fg, shape, bg
    raise ValueError(
        f"{prompt!r} is not a toy-world prompt; expected 'a <colour> <shape> on a <colour> background' "
        f"with shape in {', '.join(SHAPES)} and two different colours from {', '.join(COLORS)}")


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (fg, shape, bg) triple with fg != bg, in a fixed order."""
    return [(fg, s, bg) for fg in COLORS for s in SHAPES for bg in COLORS if bg != fg]


def heldout_combinations() -> list[tuple[str, str, str]]:
    """The held-out split: for each (fg, shape) pair one background, spread so that every
    background colour is held out about equally often (24 of 168 = 14.3 %)."""
    out = []
    for k, (fg, shape) in enumerate((fg, s) for fg in COLORS for s in SHAPES):
        others = [c for c in COLORS if c != fg]
        out.append((fg, shape, others[(3 * k + 1) % len(others)]))
    return out


def train_combinations() -> list[tuple[str, str, str]]:
    held = set(heldout_combinations())
    return [c for c in all_combinations() if c not in held]


PROMPT_SETS = {
    "toy:train": "the 144 prompts seen in pretraining",
    "toy:heldout": "the 24 prompts never seen in pretraining (eval default)",
    "toy:all": "all 168 toy prompts",
}


def named_set(name: str) -> list[str]:
    if name == "toy:train":
        combos = train_combinations()
    elif name == "toy:heldout":
        combos = heldout_combinations()
    elif name == "toy:all":
        combos = all_combinations()
    else:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}, file:PATH")
    return [make_prompt(*c) for c in combos]


def resolve_prompts(spec: str | Sequence[str], *, field: str = "prompts", confined: bool = False,
                    config_dir: str | None = None) -> list[str]:
    """Turn a prompt spec into a list of prompts.

    ``spec`` is a list of prompts (returned as a list of stripped strings), a named set
    (``"toy:train"``, ``"toy:heldout"``, ``"toy:all"``), or ``"file:PATH"`` — a UTF-8 text file
    with one prompt a line (blank lines and lines starting with ``#`` are skipped). With
    ``confined`` (or a ``config_dir``) the file must lie inside the allowed roots
    (:mod:`grpo_guard.paths`: the config's directory, GG_PROMPTS_DIR, the built-in sets); a
    queued run's files are always read that way. Raises ``ValueError`` with a one-line reason
    (a ``ConfigError`` naming ``field`` for a refused file)."""
    from grpo_guard import paths

    if isinstance(spec, str):
        if spec.startswith("file:"):
            raw = spec[len("file:"):]
            if confined or config_dir:
                path = paths.confine(field, raw, config_dir=config_dir)
            else:  # `grpo-guard train` on one's own machine: any file the user can read
                path = os.path.expanduser(raw.strip())
            lines = paths.read_lines(field, path)
            prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
            if not prompts:
                raise ValueError(f"prompt file {path} has no prompts (one prompt a line)")
            return prompts
        if ":" in spec and spec.split(":", 1)[0] == "toy":
            return named_set(spec)
        raise ValueError(f"unknown prompt set {spec!r}; use {', '.join(PROMPT_SETS)}, file:PATH or a list of prompts")
    prompts = [str(p).strip() for p in spec]
    if not prompts or any(not p for p in prompts):
        raise ValueError("the prompt list is empty or contains an empty prompt")
    return prompts


def corpus_words() -> list[str]:
    """Every word of the toy prompts (for the offline tokenizers)."""
    words = {"a", "an", "on", "background"} | set(COLORS) | set(SHAPES)
    return sorted(words)

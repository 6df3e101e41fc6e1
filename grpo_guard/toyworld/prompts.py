"""The toy world's vocabulary, prompts and splits. Pure Python: imports no torch or numpy.

Prompts have the form ``"a red circle on a blue background"``: one of :data:`SHAPES`, a
foreground colour and a different background colour from :data:`PALETTE` (8 × 3 × 7 = 168
combinations). About 15 % of the combinations form the held-out split: they are never rendered
during pretraining, so sampling them measures compositional generalisation. Each held-out
combination's shape, colours and (fg, shape) pair all appear in training; only the triple is new.

The named sets ``toy:train``, ``toy:heldout`` and ``toy:all`` are registered in
:mod:`grpo_guard.prompts`, which resolves every prompt spec.
"""

from __future__ import annotations

import re

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


def named_set(name: str) -> list[str]:
    """The prompts of ``toy:train``, ``toy:heldout`` or ``toy:all``."""
    combos = {"toy:train": train_combinations, "toy:heldout": heldout_combinations,
              "toy:all": all_combinations}.get(name)
    if combos is None:
        raise ValueError(f"unknown toy prompt set {name!r}; known: toy:train, toy:heldout, toy:all")
    return [make_prompt(*c) for c in combos()]


def _register() -> None:
    from grpo_guard.prompts import Prompt, register

    for name, what in (("toy:train", "the 144 toy prompts seen in pretraining"),
                       ("toy:heldout", "the 24 toy prompts never seen in pretraining (the toy eval default)"),
                       ("toy:all", "all 168 toy prompts")):
        register(name, what, lambda name=name: [Prompt(p) for p in named_set(name)])


_register()


def corpus_words() -> list[str]:
    """Every word of the toy prompts (for the offline tokenizers)."""
    words = {"a", "an", "on", "background"} | set(COLORS) | set(SHAPES)
    return sorted(words)

"""``geneval:train`` / ``geneval:test``: prompts in GenEval's six task families, each carrying
GenEval-format metadata (``tag``, ``include``, ``exclude``), as the ``geneval`` reward reads it.

Generation follows GenEval's ``prompts/create_prompts.py``: the 80 COCO class names of its
``object_names.txt``, its ten colours, four relations and counts 2-4; "a photo of ..." phrasing
with its article and plural rules; no colour is asked of a person; counting excludes count + 1;
a position prompt "a photo of A left of B" includes B, then A with ``position: [relation, 0]``.
The draws are ours (a fixed seed per family); the test split is drawn first and train never
repeats a test prompt text, nor any of the 553 prompts of GenEval's official benchmark
(``evaluation_metadata.jsonl``), which Flow-GRPO also removes from its training set: the package
carries the SHA-256 of each official prompt text (``geneval_official.sha256``, computed once from
the official file; its header says how), so nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import os
import random
from functools import lru_cache
from typing import Any

from grpo_guard.prompts.catalog import register
from grpo_guard.prompts.geneval_vocab import COCO_CLASSES, COLOUR_NAMES, RELATIONS
from grpo_guard.prompts.prompt import Prompt

# GenEval's vocabulary, shared with the rules that score against it (grpo_guard.rewards.geneval_rules).
CLASSES: tuple[str, ...] = COCO_CLASSES
COLORS: tuple[str, ...] = COLOUR_NAMES
POSITIONS: tuple[str, ...] = RELATIONS
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
COUNTS: tuple[int, ...] = (2, 3, 4)

SEED = 20251027
# Prompts per family: (test, train). None: every prompt of the family not in test.
SIZES: dict[str, tuple[int, int | None]] = {
    "single_object": (20, None),   # 80 in all
    "two_object": (100, 3000),
    "counting": (80, None),        # 240 in all
    "colors": (94, None),          # 790 in all
    "position": (100, 4000),
    "color_attr": (100, 4000),
}

Row = dict[str, Any]
OFFICIAL_HASHES_FILE = os.path.join(os.path.dirname(__file__), "geneval_official.sha256")


@lru_cache(maxsize=1)
def official_prompt_hashes() -> frozenset[str]:
    """SHA-256 hex digests of the 553 official GenEval benchmark prompt texts."""
    with open(OFFICIAL_HASHES_FILE, encoding="ascii") as fh:
        return frozenset(line.strip() for line in fh if line.strip() and not line.startswith("#"))


def is_official_prompt(text: str) -> bool:
    """Whether ``text`` is one of GenEval's official benchmark prompts (exact text)."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest() in official_prompt_hashes()


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    # GenEval's rule, kept as is so prompts match the benchmark's ("buses", but also "sheeps")
    return f"{name}es" if name.endswith("s") else f"{name}s"


def _colorable() -> list[str]:
    return [c for c in CLASSES if c != "person"]


def single_object(a: str) -> Row:
    return {"tag": "single_object", "include": [{"class": a, "count": 1}], "prompt": f"a photo of {with_article(a)}"}


def two_object(a: str, b: str) -> Row:
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def counting(a: str, n: int) -> Row:
    return {"tag": "counting", "include": [{"class": a, "count": n}], "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {make_plural(a)}"}


def colors(a: str, color: str) -> Row:
    return {"tag": "colors", "include": [{"class": a, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {a}"}


def position(a: str, rel: str, b: str) -> Row:
    return {"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {with_article(a)} {rel} {with_article(b)}"}


def color_attr(a: str, ca: str, b: str, cb: str) -> Row:
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {with_article(ca)} {a} and {with_article(cb)} {b}"}


def _enumerated(tag: str) -> list[Row] | None:
    """Every prompt of a family small enough to list (None for color_attr: 554k)."""
    if tag == "single_object":
        return [single_object(a) for a in CLASSES]
    if tag == "two_object":
        return [two_object(a, b) for a in CLASSES for b in CLASSES if a != b]
    if tag == "counting":
        return [counting(a, n) for a in CLASSES for n in COUNTS]
    if tag == "colors":
        return [colors(a, c) for a in _colorable() for c in COLORS]
    if tag == "position":
        return [position(a, r, b) for a in CLASSES for b in CLASSES if a != b for r in POSITIONS]
    return None


def _draw_color_attr(rng: random.Random) -> Row:
    a, b = rng.sample(_colorable(), 2)
    ca, cb = rng.sample(COLORS, 2)
    return color_attr(a, ca, b, cb)


@lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[list[Row], list[Row]]]:
    out: dict[str, tuple[list[Row], list[Row]]] = {}
    for k, (tag, (n_test, n_train)) in enumerate(SIZES.items()):
        rng = random.Random(SEED + k)
        rows = _enumerated(tag)
        if rows is not None:
            rng.shuffle(rows)
            test = rows[:n_test]
            rest = [r for r in rows[n_test:] if not is_official_prompt(r["prompt"])]
            train = rest if n_train is None else rest[:n_train]
        else:
            seen: dict[str, Row] = {}
            while len(seen) < n_test + (n_train or 0):
                row = _draw_color_attr(rng)
                # the test split is drawn first, so it may hold official prompts; train never does
                if len(seen) < n_test or not is_official_prompt(row["prompt"]):
                    seen.setdefault(row["prompt"], row)
            drawn = list(seen.values())
            test, train = drawn[:n_test], drawn[n_test:]
        out[tag] = (test, train)
    return out


@lru_cache(maxsize=2)
def geneval_set(split: str) -> tuple[Prompt, ...]:
    """The prompts of ``split`` ('train' or 'test'), family by family."""
    if split not in ("train", "test"):
        raise ValueError(f"no GenEval split {split!r}; use train or test")
    i = 0 if split == "test" else 1
    return tuple(Prompt(r["prompt"], {k: v for k, v in r.items() if k != "prompt"})
                 for parts in _splits().values() for r in parts[i])


register("geneval:train", "GenEval-style prompts in the six task families with GenEval metadata "
         "(~11.6k; none is a geneval:test prompt or one of GenEval's 553 official benchmark prompts)", lambda: geneval_set("train"), geneval=True)
register("geneval:test", "a GenEval-sized held-out set (494 prompts, six families, GenEval metadata); "
         "for the official benchmark use geneval:file:evaluation_metadata.jsonl", lambda: geneval_set("test"),
         geneval=True)

"""Toy prompts and splits: disjoint, covering, registered by name in grpo_guard.prompts; the
module stays torch-free. (file:, list and the other spec forms: tests/grpo_guard/test_prompts.py.)"""

import subprocess
import sys

import pytest

from grpo_guard.prompts import resolve_prompts
from grpo_guard.toyworld.prompts import (
    COLORS,
    SHAPES,
    all_combinations,
    heldout_combinations,
    make_prompt,
    parse_prompt,
    train_combinations,
)


def test_splits_are_disjoint_and_cover_all_combinations():
    train, held = train_combinations(), heldout_combinations()
    assert set(train).isdisjoint(held), "a held-out combination is also in the training split"
    assert set(train) | set(held) == set(all_combinations())
    assert len(all_combinations()) == len(COLORS) * len(SHAPES) * (len(COLORS) - 1) == 168
    assert 0.12 <= len(held) / 168 <= 0.18, "held-out split should be about 15 %"


def test_every_heldout_part_is_seen_in_training():
    """Held-out prompts test composition: each pair inside a held-out triple occurs in training."""
    train = train_combinations()
    for fg, shape, bg in heldout_combinations():
        assert any(t[:2] == (fg, shape) for t in train)
        assert any(t[1:] == (shape, bg) for t in train)
        assert any((t[0], t[2]) == (fg, bg) for t in train)


def test_named_sets_resolve_to_distinct_prompts():
    train, held = resolve_prompts("toy:train"), resolve_prompts("toy:heldout")
    assert len(train) == 144 and len(held) == 24 and not set(train) & set(held)
    assert len(resolve_prompts("toy:all")) == 168
    assert "a red circle on a blue background" in held


def test_parse_prompt_round_trips_and_rejects_others():
    for c in all_combinations():
        assert parse_prompt(make_prompt(*c)) == c
    assert parse_prompt("An orange square on a white background.") == ("orange", "square", "white")
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        parse_prompt("a red circle on a red background")
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        parse_prompt("a photo of a cat")


def test_resolving_built_in_sets_imports_no_torch_numpy_or_datasets():
    code = ("import sys, grpo_guard.prompts as p; p.resolve_prompts('toy:train'); p.resolve_prompts('ocr:test'); "
            "p.resolve_prompts('geneval:test'); print(sorted(m for m in ('torch', 'numpy', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"resolving the built-in prompt sets imported {out.stdout.strip()}"

"""Toy prompts and splits: disjoint, covering, resolvable by name; prompts.py stays torch-free."""

import subprocess
import sys

import pytest

from grpo_guard.toyworld.prompts import (
    COLORS,
    SHAPES,
    all_combinations,
    heldout_combinations,
    make_prompt,
    parse_prompt,
    resolve_prompts,
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


def test_file_and_list_specs(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n", encoding="utf-8")
    assert resolve_prompts(f"file:{f}") == ["a cat", "a dog"]
    assert resolve_prompts(["x ", "y"]) == ["x", "y"]


@pytest.mark.parametrize("spec, match", [("toy:nope", "unknown prompt set"), ("file:/no/such/file", "cannot read"),
                                         ("prompts", "unknown prompt set"), ([], "empty")])
def test_bad_specs_say_what_is_wrong(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_prompts(spec)


def test_parse_prompt_round_trips_and_rejects_others():
    for c in all_combinations():
        assert parse_prompt(make_prompt(*c)) == c
    assert parse_prompt("An orange square on a white background.") == ("orange", "square", "white")
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        parse_prompt("a red circle on a red background")
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        parse_prompt("a photo of a cat")


def test_prompts_module_imports_no_torch():
    code = "import sys, grpo_guard.toyworld.prompts as p; p.resolve_prompts('toy:train'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "grpo_guard.toyworld.prompts pulled in torch"

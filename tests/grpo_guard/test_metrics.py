"""The metric-key catalogue (``grpo_guard.metrics``): every key a real run logs is in it, and it
stays importable by the torch-free app."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from grpo_guard.training.trainer import train


def test_every_key_a_toy_run_logs_is_in_the_catalogue(tmp_path):
    """Two toy epochs with the KL term and EMA on (so ``kl``, ``kl_ref``, ``ema_decay`` are
    logged): every scalar and per-denoising-step key the trainer logs has a catalogue entry."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict(dict(backbone="toy", group_size=2, num_steps=3, eval_num_steps=2, lora_rank=4,
                                   sample_batch_size=2, prompts_per_epoch=2, eval_seeds=[0], eval_every=1,
                                   eval_prompts=["a red circle on a blue background"], epochs=2, kl_beta=0.01,
                                   ema=True))
    rec = MemoryRecorder(str(tmp_path))
    train(cfg, rec, MemoryControl())
    scalars = {k for _, k in rec.scalars}
    stats = {k for row in rec.step_stats.values() for k in row.stats}
    assert {M.KL, M.EMA_DECAY, M.REWARD_TOTAL_MEAN, M.EVAL_GOLD} <= scalars and M.KL_REF in stats
    assert not sorted(k for k in scalars if M.scalar(k) is None), "the trainer logs scalars the catalogue lacks"
    assert not sorted(k for k in stats if M.step_stat(k) is None), "the trainer logs step stats the catalogue lacks"


@pytest.mark.parametrize(("key", "entry"), [
    ("reward/total/mean", M.REWARD_TOTAL_MEAN),     # an exact key wins over the pattern it also matches
    ("reward/toy_fg_share/mean", M.REWARD_MEAN),
    ("eval/proxy", M.EVAL_PROXY),
    ("eval/toy_alignment", M.EVAL_REWARD),
])
def test_keys_find_their_entry(key, entry):
    assert M.scalar(key).key == entry


def test_a_pattern_name_holds_no_slash():
    """``eval/{name}`` must not swallow nested keys such as a per-family ``eval/a/b``: those are a
    reward's breakdowns, ``eval/{name}/{detail}``, catalogued on their own; deeper keys are not."""
    assert M.name_in(M.EVAL_REWARD, "eval/toy_alignment") == "toy_alignment"
    assert M.name_in(M.EVAL_REWARD, "eval/a/b") is None
    assert M.name_in(M.EVAL_DETAIL, "eval/geneval/strict") == "geneval"
    assert M.scalar("eval/geneval/counting").key == M.EVAL_DETAIL
    assert M.scalar("eval/a/b/c") is None
    assert M.scalar("no_such_key") is None and M.step_stat("no_such_stat") is None


def test_every_entry_is_documented_once():
    """Each key appears once per catalogue, with a meaning and a unit."""
    for catalogue in (M.SCALARS, M.STEP_STATS):
        keys = [m.key for m in catalogue]
        assert len(keys) == len(set(keys)), "a key is catalogued twice"
        assert all(m.meaning and m.unit for m in catalogue), "an entry lacks its meaning or unit"


def test_the_catalogue_imports_only_the_standard_library():
    """The app imports the catalogue and must never load torch (DESIGN.md)."""
    tree = ast.parse(Path(M.__file__).read_text(encoding="utf-8"))
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots <= set(sys.stdlib_module_names), f"non-stdlib imports: {roots - set(sys.stdlib_module_names)}"

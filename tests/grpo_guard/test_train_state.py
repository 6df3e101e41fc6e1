"""``TrainerState`` and the checkpoint's ``trainer`` dict: the form the loop wrote before the
dataclass existed still loads, and a checkpoint holding it resumes exactly."""

from __future__ import annotations

import math

import torch

from grpo_guard.config import RunConfig
from grpo_guard.training.checkpoint import load_checkpoint
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from grpo_guard.training.train_state import EvalHistory, TrainerState
from grpo_guard.training.trainer import train
from tests.grpo_guard.controls import StopAfter

# The dict the loop kept (and checkpointed) before TrainerState, as an epoch-3 checkpoint held it.
OLD_FORM = {"optimizer_steps": 6, "history": {"step": [0, 2], "proxy": [0.25, 0.5], "gold": [0.75, 0.5]},
            "best_gold": 0.75, "best_step": 0, "onset": None, "last_eval": 2, "last_ckpt_step": 3}


def test_the_old_trainer_dict_loads_typed_and_writes_back_unchanged():
    """A checkpoint written before TrainerState must resume, and new checkpoints keep its form."""
    state = TrainerState.from_dict(OLD_FORM)
    assert state.optimizer_steps == 6 and state.best_step == 0 and state.last_ckpt_step == 3
    assert state.history == EvalHistory([0, 2], [0.25, 0.5], [0.75, 0.5])
    assert state.history.at(2) == (0.5, 0.5) and state.history.at(1) is None
    assert state.to_dict() == OLD_FORM, "the checkpoint form of the trainer state changed"


def test_a_trainer_dict_lacking_keys_gets_the_defaults():
    """Keys an older checkpoint lacks keep a fresh run's values; unknown keys are ignored."""
    state = TrainerState.from_dict({"optimizer_steps": 2, "history": {"step": [0], "proxy": [0.1], "gold": [0.2]},
                                    "some_future_key": 1})
    assert (state.optimizer_steps, state.best_gold, state.best_step, state.onset) == (2, -math.inf, -1, None)
    assert (state.last_eval, state.last_ckpt_step) == (-1, -1)
    assert TrainerState.from_dict({}) == TrainerState()


def test_to_dict_copies_the_history():
    """The checkpointed history must not change when the live state records another eval."""
    state = TrainerState()
    saved = state.to_dict()
    state.history.add(0, 0.1, 0.2)
    assert saved["history"] == {"step": [], "proxy": [], "gold": []}


def _toy_config() -> RunConfig:
    return RunConfig.from_dict(dict(backbone="toy", group_size=2, num_steps=3, eval_num_steps=2, lora_rank=4,
                                    sample_batch_size=2, prompts_per_epoch=2, eval_seeds=[0], eval_every=1,
                                    eval_prompts=["a red circle on a blue background"], seed=3, learning_rate=1e-2,
                                    epochs=2, ema=True, ema_every=1))


def test_a_checkpoint_holding_the_old_trainer_dict_resumes_exactly(tmp_path):
    """Rewrite a stopped run's checkpoint with the trainer dict spelled out in the old form:
    the resumed run logs exactly what the uninterrupted run logs."""
    torch.set_num_threads(1)
    cfg = _toy_config()
    full = MemoryRecorder(str(tmp_path / "full"))
    train(cfg, full, MemoryControl())
    cut = MemoryRecorder(str(tmp_path / "cut"))
    stopped = train(cfg, cut, StopAfter(1))
    assert (stopped.status, stopped.step) == ("cancelled", 1)

    blob = torch.load(stopped.last_checkpoint, weights_only=True)
    t = blob["trainer"]
    blob["trainer"] = {"optimizer_steps": t["optimizer_steps"],
                       "history": {k: list(v) for k, v in t["history"].items()}, "best_gold": t["best_gold"], "best_step": t["best_step"], "onset": t["onset"],
                       "last_eval": t["last_eval"], "last_ckpt_step": t["last_ckpt_step"]}
    torch.save(blob, stopped.last_checkpoint)
    assert load_checkpoint(stopped.last_checkpoint).trainer["history"]["step"] == [0, 1]

    resumed = train(cfg, cut, MemoryControl(), resume_from=stopped.last_checkpoint)
    assert (resumed.status, resumed.step) == ("succeeded", 2)
    a = {k: v for k, v in full.scalars.items() if not k[1].startswith("time/")}
    b = {k: v for k, v in cut.scalars.items() if not k[1].startswith("time/")}
    assert set(a) == set(b), "the resumed run logged a different set of (step, key) rows"
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and not (math.isnan(a[k]) and math.isnan(b[k]))}
    assert not diff, f"the run resumed from the old trainer dict diverged: {sorted(diff.items())[:5]}"


def test_a_checkpoint_keeps_which_config_fields_were_set(tmp_path):
    """The config JSON holds every field; the fields the user set travel beside it, so a FLUX
    run without an explicit ``shift`` keeps FluxPipeline's resolution-dependent schedule when
    ``grpo-guard sample`` / ``export`` rebuild it from the checkpoint."""
    from grpo_guard.config import RunConfig
    from grpo_guard.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    config = RunConfig.from_dict({"backbone": "flux", "model": "/m", "lora_rank": 4, "epochs": 3})
    path = save_checkpoint(str(tmp_path), Checkpoint(step=1, config=config, trainable={}, ema=None, optimizer=None))
    back = load_checkpoint(path).config
    assert back == config and back.fields_set() == config.fields_set() and "shift" not in back.fields_set()

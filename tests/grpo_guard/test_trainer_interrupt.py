"""A shutdown (``Control.interrupted``) stops the trainer at the first point where a checkpoint is
exact, and the resumed run logs exactly what the uninterrupted run logs: no lost epoch, no
duplicated step (ALGORITHM.md's resume invariant, here through every interrupt point)."""

from __future__ import annotations

import math

import pytest

from grpo_guard.training.checkpoint import load_checkpoint
from grpo_guard.training.recording import MemoryControl
from tests.grpo_guard.test_trainer import loaded, make_config, no_timing, one_thread, pipe_dir, run  # noqa: F401


class InterruptIn2(MemoryControl):
    """Reports a shutdown at the ``n``-th ``interrupted()`` call of epoch 2 (calls in an epoch of the
    tiny config: 4 in sampling (one per denoising step), 1 before the update, 1 before each of its 2
    micro-batches, 1 after the epoch is recorded, 3 in the eval)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.polls, self.calls = n, 0, 0

    def stop_requested(self) -> bool:
        self.polls += 1
        return self.calls >= self.n  # once interrupted, the next epoch's poll stops too

    def interrupted(self) -> bool:
        if self.polls >= 2:
            self.calls += 1
        return self.polls >= 2 and self.calls >= self.n


@pytest.fixture(scope="module")
def full(pipe_dir, loaded, tmp_path_factory):  # noqa: F811
    cfg = make_config(pipe_dir, algorithm="flow_grpo", epochs=3, ema_every=1, learning_rate=1e-2)
    result, rec = run(loaded, cfg, tmp_path_factory.mktemp("full"))
    return cfg, rec


@pytest.mark.parametrize(("n", "stopped_at", "where"), [
    (2, 1, "between the denoising steps of the epoch's sampling"),
    (7, 1, "between two micro-batches: the pre-update snapshot is put back"),
    (10, 2, "during the epoch's eval, after the epoch was recorded (the resume runs the eval first)"),
])
def test_an_interrupt_checkpoints_at_once_and_the_resume_loses_and_repeats_nothing(
        pipe_dir, loaded, tmp_path, full, n, stopped_at, where):  # noqa: F811
    cfg, rec_full = full
    cut, rec = run(loaded, cfg, tmp_path, control=InterruptIn2(n))
    assert (cut.status, cut.step) == ("cancelled", stopped_at), where
    assert load_checkpoint(cut.last_checkpoint).step == stopped_at
    assert max(step for step, _ in rec.scalars) == stopped_at, f"{where}: rows of a later epoch were logged"
    resumed, _ = run(loaded, cfg, tmp_path, recorder=rec, resume_from=cut.last_checkpoint)
    assert resumed.status == "succeeded"
    a, b = no_timing(rec_full), no_timing(rec)
    assert set(a) == set(b), f"{where}: missing {sorted(set(a) - set(b))[:5]}, extra {sorted(set(b) - set(a))[:5]}"
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k] and not (math.isnan(a[k]) and math.isnan(b[k]))}
    assert not diff, f"{where}: the resumed run diverged: {sorted(diff.items())[:5]}"


def test_eval_samples_the_base_model_until_the_epoch_the_config_says_the_ema_first_moves(pipe_dir, loaded, tmp_path):  # noqa: F811
    """RunConfig.first_ema_epoch is what the trainer does: with 2 optimizer steps an epoch and
    ema_every=4, the evals of epochs 0 and 1 are identical (the base model) and epoch 2's is not."""
    cfg = make_config(pipe_dir, algorithm="flow_grpo", epochs=2, ema_every=4, learning_rate=1e-2)
    assert (cfg.optimizer_steps_per_epoch(), cfg.first_ema_epoch()) == (2, 2)
    assert "first moves after epoch 2" in cfg.ema_notice(1) and cfg.ema_notice(2) is None
    _, rec = run(loaded, cfg, tmp_path)
    proxy = {step: v for (step, key), v in rec.scalars.items() if key == "eval/proxy"}
    assert proxy[0] == proxy[1] != proxy[2], proxy
    late = make_config(pipe_dir, epochs=6, ema_every=8, train_batch_size=8)  # the case: 1 step an epoch
    assert late.first_ema_epoch() == 8 and "never leave the base model's" in late.ema_notice()
    assert make_config(pipe_dir, ema=False).ema_notice() is None

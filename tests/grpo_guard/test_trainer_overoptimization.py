"""``on_overoptimization``: when the run's own alarm fires, ``continue`` trains on, ``stop`` ends
the run cleanly after that epoch with a checkpoint, ``stop_keep_best`` also marks the best-gold
checkpoint. The alarm is forced to fire at epoch 2 (its rule has its own tests)."""

import pytest

import grpo_guard.training.train_run
from tests.grpo_guard.test_trainer import loaded, make_config, one_thread, pipe_dir, run  # noqa: F401


@pytest.fixture
def alarm_at_2(monkeypatch):
    monkeypatch.setattr(grpo_guard.training.train_run, "hacking_onset", lambda steps, proxy, gold: 2 if steps[-1] >= 2 else None)


@pytest.mark.parametrize("action", ["continue", "stop", "stop_keep_best"])
def test_the_run_acts_on_its_alarm_as_configured(pipe_dir, loaded, tmp_path, alarm_at_2, action):  # noqa: F811
    cfg = make_config(pipe_dir, epochs=4, on_overoptimization=action)
    result, rec = run(loaded, cfg, tmp_path)
    assert result.status == "succeeded"
    if action == "continue":
        assert result.step == 4 and max(rec.checkpoints) == 4
        return
    assert result.step == 2, "stopped after the epoch whose eval fired the alarm"
    assert max(s for s, _ in rec.scalars) == 2 and max(rec.checkpoints) == 2, "nothing trained or written after it"
    assert result.last_checkpoint == rec.checkpoints[2][0]
    assert any("over-optimisation alarm fired" in m for _, m in rec.lines)
    marked = [s for s, (_, meta) in rec.checkpoints.items() if meta.get("best")]
    if action == "stop":
        assert marked == []
    else:
        best = rec.checkpoints[2][1]["best_step"]
        assert marked == [best] and rec.checkpoints[best][1]["reason"] == "best-gold"

"""A CUDA out-of-memory error in the trainer ends the run with the plan's figures and a setting
that fits, and the run resumes from its last checkpoint (simulated: ``torch.OutOfMemoryError``
raised by a test double of the update on the CPU)."""

from __future__ import annotations

import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.planning.runtime import GpuOutOfMemory
from grpo_guard.training import trainer
from grpo_guard.training.recording import MemoryRecorder, NullControl


@pytest.mark.slow
def test_oom_in_the_update_ends_with_the_plan_and_the_run_resumes(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GG_PLAN_CACHE", str(tmp_path_factory.getbasetemp() / "plan-cache"))  # shared by the session
    monkeypatch.setenv("GG_GPU_MEMORY_GIB", "1.5")
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({"group_size": 4, "prompts_per_epoch": 2, "train_batch_size": 4, "num_steps": 4,
                               "eval_num_steps": 2, "epochs": 2, "eval_every": 10, "checkpoint_every": 1,
                               "eval_seeds": [0], "eval_prompts": ["a red circle on a blue background"],
                               "update_rows_per_forward": 6, "sample_batch_size": 8})
    real = trainer.policy_update
    calls: list[int] = []

    def oom_at_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(trainer, "policy_update", oom_at_epoch_2)
    rec = MemoryRecorder(str(tmp_path / "ckpt"))
    with pytest.raises(GpuOutOfMemory) as e:
        trainer.train(cfg, rec, NullControl(), device="cpu")
    msg = str(e.value)
    assert msg.startswith("CUDA ran out of memory in the policy update of epoch 2: planned peak ")
    assert "1.5 GiB" in msg and "set update_rows_per_forward: " in msg and "resume the run" in msg
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)
    ckpt = rec.checkpoints[max(rec.checkpoints)]
    result = trainer.train(cfg, MemoryRecorder(str(tmp_path / "ckpt2")), NullControl(), device="cpu",
                           resume_from=ckpt if isinstance(ckpt, str) else ckpt[0])
    assert result.status == "succeeded" and result.step == 2

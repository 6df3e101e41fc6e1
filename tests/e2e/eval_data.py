"""A toy run with one checkpoint (a perturbed LoRA) in the store of GG_DATA_DIR, for the
evaluation browser test: ``python -m tests.e2e.eval_data`` prints the run id."""

from __future__ import annotations


def stored_run_with_checkpoint(step: int = 3) -> int:
    import torch

    from grpo_guard.config import RunConfig
    from grpo_guard.models import build_backbone
    from grpo_guard.store import db, queries
    from grpo_guard.store.recorder import StoreRecorder
    from grpo_guard.training.checkpoint import Checkpoint, save_checkpoint

    db.upgrade()
    prompts = ["a red circle on a blue background", "a green square on a yellow background"]
    config = RunConfig.from_dict({"eval_num_steps": 4, "eval_prompts": prompts, "prompts": prompts})
    rid = queries.create_run(config, name="eval-e2e")
    bb = build_backbone(config, device="cpu")
    bb.add_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
    torch.manual_seed(0)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in bb.trainable_state_dict().items()}
    rec = StoreRecorder(rid)
    path = save_checkpoint(rec.checkpoint_dir(), Checkpoint(step=step, config=config, trainable=state, ema=None,
                                                             optimizer=None))
    rec.log_checkpoint(step, path, {"best_step": step})
    rec.close()
    return rid


if __name__ == "__main__":
    print(stored_run_with_checkpoint())

"""The arms of the toy over-optimisation experiment: each is one of the two example configs with
a few ``--set`` overrides (see README.md), plus where a run of an arm lives."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLASSIFIER_PROXY = "rewards={toy_classifier_confidence: 1.0, toy_shape: 0.0, toy_fg_share: 0.0}"
# A proxy whose exploit lives in the low-noise steps (fine texture: JPEG size), as the paper's
# Fig. 11 finds for real reward hacking, next to a legitimate term learnt in the high-noise steps.
NULL_PROXY = "rewards={null_noise: 1.0, toy_shape: 0.0, toy_fg_share: 0.0}"
BIG_BATCH = ["prompts_per_epoch=16", "gradient_accumulation_steps=4"]
# The paper's batch (ALGORITHM.md §5): 48 prompts × 24 images an epoch, two optimizer steps (24
# micro-batches of 48, 12 per step), LoRA r 32 / α 64 at the paper's Flow-GRPO learning rate (untuned
# on the toy), evals every 2 epochs; run on a GPU by benchmarks/gpu/check.sh. A checkpoint every
# epoch (about 4 MB): a run killed by a time box, not stopped cleanly, loses one epoch at most.
PAPER_BATCH = ["prompts_per_epoch=48", "group_size=24", "train_batch_size=48", "gradient_accumulation_steps=12",
               "lora_rank=32", "lora_alpha=64", "learning_rate=3e-4", "eval_every=2", "checkpoint_every=1"]
TEXTURE_PROXY = "rewards={toy_shape: 1.0, jpeg_incompressibility: 1.0, toy_fg_share: 0.0}"
TEXTURE5_PROXY = "rewards={toy_shape: 1.0, jpeg_incompressibility: 5.0, toy_fg_share: 0.0}"
ARMS = {
    "flow_grpo": ("examples/toy_flow_grpo.yaml", [], "Flow-GRPO"),
    "grpo_guard": ("examples/toy_grpo_guard.yaml", [], "GRPO-Guard"),
    "flow_grpo_kl": ("examples/toy_flow_grpo.yaml", ["kl_beta=0.04"], "Flow-GRPO + KL 0.04"),
    # Ablations: Guard's recipe also switches the advantage std from the batch to the group
    # (ALGORITHM.md §5.1); these arms separate that from RatioNorm + reweighting.
    "grpo_guard_global_std": ("examples/toy_grpo_guard.yaml", ["std_scope=global"], "GRPO-Guard, global std"),
    "flow_grpo_group_std": ("examples/toy_flow_grpo.yaml", ["std_scope=group"], "Flow-GRPO, group std"),
    # The same two configs optimising the learned classifier's confidence instead (a reward-model
    # proxy, as PickScore is in the paper); the analytic shape score is only logged.
    "flow_grpo_classifier": ("examples/toy_flow_grpo.yaml", [CLASSIFIER_PROXY], "Flow-GRPO, classifier proxy"),
    "grpo_guard_classifier": ("examples/toy_grpo_guard.yaml", [CLASSIFIER_PROXY], "GRPO-Guard, classifier proxy"),
    # Guard with the baseline's KL term (and its global std): differs from flow_grpo_kl only in
    # RatioNorm, reweighting and the clip range.
    "grpo_guard_kl": ("examples/toy_grpo_guard.yaml", ["kl_beta=0.04", "std_scope=global"],
                      "GRPO-Guard + KL 0.04, global std"),
    # Controls: a proxy with no signal, so gold falls by optimisation noise alone.
    "flow_grpo_null": ("examples/toy_flow_grpo.yaml", [NULL_PROXY], "Flow-GRPO, no-signal proxy"),
    "grpo_guard_null": ("examples/toy_grpo_guard.yaml", [NULL_PROXY, "std_scope=global"],
                        "GRPO-Guard, no-signal proxy, global std"),
    # Twice the images per optimizer step (16 prompts x 8, still two steps an epoch): does the
    # noise floor, and the gold lost beyond it, shrink?
    "flow_grpo_big": ("examples/toy_flow_grpo.yaml", BIG_BATCH, "Flow-GRPO, 2x batch"),
    "grpo_guard_big": ("examples/toy_grpo_guard.yaml", [*BIG_BATCH, "std_scope=global"],
                       "GRPO-Guard, 2x batch, global std"),
    "flow_grpo_big_null": ("examples/toy_flow_grpo.yaml", [*BIG_BATCH, NULL_PROXY], "Flow-GRPO, 2x batch, no-signal proxy"),
    "grpo_guard_big_null": ("examples/toy_grpo_guard.yaml", [*BIG_BATCH, NULL_PROXY, "std_scope=global"],
                            "GRPO-Guard, 2x batch, no-signal proxy, global std"),
    # Both algorithms at the same (global) advantage std, each with its no-signal control.
    "flow_grpo_paper": ("examples/toy_flow_grpo.yaml", PAPER_BATCH, "Flow-GRPO, paper batch, LoRA"),
    "grpo_guard_paper": ("examples/toy_grpo_guard.yaml", [*PAPER_BATCH, "std_scope=global"],
                         "GRPO-Guard, paper batch, LoRA, global std"),
    "flow_grpo_paper_null": ("examples/toy_flow_grpo.yaml", [*PAPER_BATCH, NULL_PROXY],
                             "Flow-GRPO, paper batch, LoRA, no-signal proxy"),
    "grpo_guard_paper_null": ("examples/toy_grpo_guard.yaml", [*PAPER_BATCH, NULL_PROXY, "std_scope=global"],
                              "GRPO-Guard, paper batch, LoRA, no-signal proxy, global std"),
    "flow_grpo_texture": ("examples/toy_flow_grpo.yaml", [TEXTURE_PROXY], "Flow-GRPO, texture proxy"),
    "grpo_guard_texture": ("examples/toy_grpo_guard.yaml", [TEXTURE_PROXY, "std_scope=global"],
                           "GRPO-Guard, texture proxy, global std"),
    "flow_grpo_texture5": ("examples/toy_flow_grpo.yaml", [TEXTURE5_PROXY], "Flow-GRPO, 5x texture proxy"),
    "grpo_guard_texture5": ("examples/toy_grpo_guard.yaml", [TEXTURE5_PROXY, "std_scope=global"],
                            "GRPO-Guard, 5x texture proxy, global std"),
}
COLORS = {"flow_grpo": "tab:red", "grpo_guard": "tab:blue", "flow_grpo_kl": "tab:orange",
          "grpo_guard_global_std": "tab:cyan", "flow_grpo_group_std": "tab:pink",
          "flow_grpo_classifier": "tab:red", "grpo_guard_classifier": "tab:blue",
          "grpo_guard_kl": "tab:purple", "flow_grpo_null": "tab:gray", "grpo_guard_null": "tab:olive",
          "flow_grpo_big": "tab:red", "grpo_guard_big": "tab:cyan", "flow_grpo_big_null": "tab:gray",
          "grpo_guard_big_null": "tab:olive",
          "flow_grpo_paper": "tab:red", "grpo_guard_paper": "tab:cyan", "flow_grpo_paper_null": "tab:gray",
          "grpo_guard_paper_null": "tab:olive",
          "flow_grpo_texture": "tab:red", "grpo_guard_texture": "tab:blue",
          "flow_grpo_texture5": "tab:red", "grpo_guard_texture5": "tab:blue"}


# Each no-signal control differs from its arm only in the proxy (same algorithm, std and batch, no KL).
CONTROL_OF = {"flow_grpo": "flow_grpo_null", "grpo_guard_global_std": "grpo_guard_null",
              "flow_grpo_big": "flow_grpo_big_null", "grpo_guard_big": "grpo_guard_big_null",
              "flow_grpo_paper": "flow_grpo_paper_null", "grpo_guard_paper": "grpo_guard_paper_null"}


def run_dir(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, "runs", f"{arm}_seed{seed}")

"""HPSv2 (Wu et al. 2023), a gold metric of the paper (ALGORITHM.md §9: SD3.5-M base 0.293).

score = cos(image, text) of the HPSv2-fine-tuned CLIP ViT-H-14, as ``hpsv2.score`` computes it
(no logit scale). The official checkpoint (``HPS_v2_compressed.pt``) is an open_clip state dict;
open_clip needs torchvision, which this stack must not install (STACK.md P4), so this reward
loads a **transformers-format** ``CLIPModel`` directory of those weights instead: set
``GG_REWARD_HPSV2_PATH`` to it (with ``GG_REWARD_HPSV2_PROCESSOR_PATH`` pointing at a
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor if the directory has none). There is no
standard hub id, so nothing is looked up in the cache. Converting the open_clip checkpoint is
not part of this project and has not been verified against the official scorer.

In a run config the same settings are per-reward options, which win over the variables:
``reward_options: {hpsv2: {path: DIR, processor_path: DIR}}`` (see ``grpo_guard.rewards.REGISTRY`` for each reward's options).
"""

from __future__ import annotations

import numpy as np

from grpo_guard.rewards.clip import CLIPScorer, processor_dir_for
from grpo_guard.rewards.weights import reward_weights_dir


class HPSv2Reward:
    """``reward(images, prompts) -> (B,)`` HPSv2 score (cosine, ~0.2–0.3)."""

    name = "hpsv2"
    processor_hub_id = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, path: str | None = None, *, processor_path: str | None = None, **kwargs):
        model_dir = reward_weights_dir(self.name, path, None,
                                       what="hpsv2 reward model (a transformers-format CLIPModel of HPSv2)")
        proc = processor_dir_for(self.name, model_dir, processor_path, self.processor_hub_id)
        self.scorer = CLIPScorer(model_dir, proc, **kwargs)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.scorer.cosine(images, prompts)


def hpsv2(**options) -> HPSv2Reward:
    return HPSv2Reward(**options)

"""PickScore (Kirstain et al. 2023): a CLIP-H model fine-tuned on human preferences.

score = logit_scale · cos(image, text), about 21–23 for SD3.5-M / FLUX images (ALGORITHM.md §9,
Table 1 reports raw values: 21.5 → 23.3). Weights: ``yuvalkirstain/PickScore_v1``; its processor
(``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``) is used from the model directory when it carries
one. Set ``GG_REWARD_PICKSCORE_PATH`` (and, if the processor lives elsewhere,
``GG_REWARD_PICKSCORE_PROCESSOR_PATH``) to local copies, or have both in the HF cache.

In a run config the same settings are per-reward options, which win over the variables:
``reward_options: {pickscore: {path: DIR, processor_path: DIR, batch_size: 16}}`` (see ``grpo_guard.rewards.REGISTRY`` for each reward's options).
"""

from __future__ import annotations

import numpy as np

from grpo_guard.rewards.clip import CLIPScorer, processor_dir_for
from grpo_guard.rewards.weights import reward_weights_dir


class PickScoreReward:
    """``reward(images, prompts) -> (B,)`` PickScore (raw scale; ``scale`` multiplies it,
    e.g. 1/26 as Flow-GRPO's trainer does)."""

    name = "pickscore"
    hub_id = "yuvalkirstain/PickScore_v1"
    processor_hub_id = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, path: str | None = None, *, processor_path: str | None = None, scale: float = 1.0,
                 **kwargs):
        model_dir = reward_weights_dir(self.name, path, self.hub_id)
        proc = processor_dir_for(self.name, model_dir, processor_path, self.processor_hub_id)
        self.scorer = CLIPScorer(model_dir, proc, **kwargs)
        self.scale = float(scale)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.scale * self.scorer.logit_scale * self.scorer.cosine(images, prompts)


def pickscore(**options) -> PickScoreReward:
    return PickScoreReward(**options)

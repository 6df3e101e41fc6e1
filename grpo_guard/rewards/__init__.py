"""Reward and evaluator registry.

A reward scores decoded images: ``reward(images, prompts) -> np.ndarray`` of shape (B,), where
``images`` is uint8 (B, H, W, 3) and ``prompts`` a list of B strings. Each entry names the module
that builds it, so this registry (and config validation, and the app) loads no torch or model
weights until a reward is actually built. Rewards are chosen from this registry by name only:
a run config can never make a worker import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class RewardSpec:
    name: str
    target: str  # "package.module:factory"; factory(**options) -> Reward
    kind: Literal["proxy", "gold", "any"]
    backbones: tuple[str, ...]  # backbones it makes sense for ("toy", "sd3", "flux")
    help: str


REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, target: str, kind: Literal["proxy", "gold", "any"], help: str,
             backbones: tuple[str, ...] = ("toy", "sd3", "flux")) -> None:
    REGISTRY[name] = RewardSpec(name, target, kind, backbones, help)


def available() -> list[str]:
    return sorted(REGISTRY)


def build_reward(name: str, **options: Any) -> Reward:
    """Instantiate a registered reward. Raises KeyError with the list of known names."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(available())}")
    module, _, attr = spec.target.partition(":")
    factory: Callable[..., Reward] = getattr(importlib.import_module(module), attr)
    return factory(**options)


# ---- the registry ---------------------------------------------------------------------------
# Entries are added next to their implementation's module path; keep this list in one place so
# that `grpo-guard config fields` and the New-run form can list them without importing anything.

# Rewards for real images (SD3 / FLUX). Model-based ones load local weights only: the reward
# option `path`, or GG_REWARD_<NAME>_PATH, or their standard hub id from the HF cache.
_REAL = ("sd3", "flux")
register("ocr", "grpo_guard.rewards.ocr:ocr", "proxy",
         "OCR accuracy of the prompt's quoted text: 1 − normalised edit distance (rapidocr, bundled models).", _REAL)
register("clipscore", "grpo_guard.rewards.clip:clipscore", "any",
         "CLIP cosine(image, prompt); CLIP ViT-L/14 from GG_REWARD_CLIPSCORE_PATH or the HF cache.", _REAL)
register("pickscore", "grpo_guard.rewards.pickscore:pickscore", "any",
         "PickScore (≈21–23); PickScore_v1 from GG_REWARD_PICKSCORE_PATH or the HF cache.", _REAL)
register("hpsv2", "grpo_guard.rewards.hps:hpsv2", "gold",
         "HPSv2 (≈0.2–0.3); a transformers-format CLIP of the HPSv2 weights at GG_REWARD_HPSV2_PATH.", _REAL)
register("imagereward", "grpo_guard.rewards.imagereward:imagereward", "gold",
         "ImageReward (normalised); a transformers-format BLIP + MLP head at GG_REWARD_IMAGEREWARD_PATH.", _REAL)
register("aesthetic", "grpo_guard.rewards.aesthetic:aesthetic", "any",
         "LAION aesthetic predictor v2 (≈1–10): CLIP ViT-L/14 + the MLP head file at GG_REWARD_AESTHETIC_HEAD.", _REAL)
register("geneval", "grpo_guard.rewards.geneval:geneval", "proxy",
         "GenEval object/count/colour/position rules; needs a detector passed in code (none ships offline).", _REAL)

# Toy world (grpo_guard/rewards/toy.py) and model-free JPEG size (grpo_guard/rewards/jpeg.py).
_TOY = ("toy",)
register("toy_fg_share", "grpo_guard.rewards.toy:fg_share", "proxy",
         "Soft share of pixels in the prompt's foreground colour. Gameable: flooding the image raises it.", _TOY)
register("toy_classifier_confidence", "grpo_guard.rewards.toy:classifier_confidence", "proxy",
         "A small learned classifier's mean probability of the prompt's shape, fg and bg colour (legit headroom, hackable).", _TOY)
register("toy_alignment", "grpo_guard.rewards.toy:alignment", "gold",
         "Mean of toy_shape, toy_fg_color, toy_bg_color by the analytic checker.", _TOY)
register("toy_shape", "grpo_guard.rewards.toy:shape", "gold",
         "1 if the analytic checker finds the prompt's shape (bounding-box fill ratio), else 0.", _TOY)
register("toy_fg_color", "grpo_guard.rewards.toy:fg_color", "gold",
         "1 if the most common non-background palette colour is the prompt's foreground colour.", _TOY)
register("toy_bg_color", "grpo_guard.rewards.toy:bg_color", "gold",
         "1 if the most common palette colour on the border is the prompt's background colour.", _TOY)
register("toy_fidelity", "grpo_guard.rewards.toy:fidelity", "gold",
         "Learned fidelity model in [0, 1]: low for flooded, noisy, blurred or degenerate images.", _TOY)
register("toy_palette_purity", "grpo_guard.rewards.toy:palette_purity", "gold",
         "Soft share of pixels near some palette colour; drops for noise and off-palette artefacts.", _TOY)
register("jpeg_compressibility", "grpo_guard.rewards.jpeg:compressibility", "any",
         "−kB of the image as JPEG at quality 95 (DDPO); favours flat, simple images.")
register("jpeg_incompressibility", "grpo_guard.rewards.jpeg:incompressibility", "any",
         "+kB of the image as JPEG at quality 95 (DDPO); favours detail and noise.")

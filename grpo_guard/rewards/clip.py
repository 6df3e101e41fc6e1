"""CLIP-based scoring shared by ``clipscore``, ``pickscore``, ``hpsv2`` and ``aesthetic``: a
transformers ``CLIPModel`` + ``CLIPProcessor`` loaded from a local directory (see
:mod:`grpo_guard.rewards.weights` for where it is looked up).

``clipscore`` = cos(image, text) ∈ [−1, 1] with ``openai/clip-vit-large-patch14`` (set
``GG_REWARD_CLIPSCORE_PATH`` to a local copy, or have it in the HF cache).

In a run config the same settings are per-reward options, which win over the variables:
``reward_options: {clipscore: {path: DIR, device: cuda, batch_size: 32}}`` (see ``grpo_guard.rewards.REGISTRY`` for each reward's options).
"""

from __future__ import annotations

import os

import numpy as np

from grpo_guard.rewards.weights import check_images, default_device, reward_weights_dir

_PROCESSOR_FILES = ("preprocessor_config.json|processor_config.json", "tokenizer.json|vocab.json")


class CLIPScorer:
    """Normalised CLIP image/text embeddings from a local model directory.

    Args:
        model_dir: a ``CLIPModel.save_pretrained`` directory.
        processor_dir: where the ``CLIPProcessor`` lives (default ``model_dir``).
        device: default CUDA when available. dtype: float32 (or ``"fp16"`` on CUDA).
        batch_size: images per forward pass.
    """

    def __init__(self, model_dir: str, processor_dir: str | None = None, *, device: str | None = None,
                 dtype: str = "fp32", batch_size: int = 32):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.device = torch.device(default_device(device))
        self.dtype = torch.float16 if dtype == "fp16" and self.device.type == "cuda" else torch.float32
        self.model = CLIPModel.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(processor_dir or model_dir)
        self.batch_size = int(batch_size)
        self.max_text = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))

    def _features(self, out):
        # transformers v5 returns a model output (pooler_output = projected embedding); v4 a tensor
        return out if hasattr(out, "norm") else out.pooler_output

    def image_embeds(self, images: np.ndarray | list[np.ndarray]):
        """(B, P) float32, L2-normalised; ``images`` uint8 (H, W, 3) each, sizes may differ."""
        import torch

        out = []
        with torch.no_grad():
            for a in range(0, len(images), self.batch_size):
                # channels_last said outright: a crop 1 or 3 px tall (H, W, 3) is otherwise taken
                # as channels-first and reaches CLIP as a garbage image
                px = self.processor.image_processor(images=[np.asarray(im) for im in images[a:a + self.batch_size]],
                                                    input_data_format="channels_last", return_tensors="pt")
                f = self._features(self.model.get_image_features(
                    pixel_values=px["pixel_values"].to(self.device, self.dtype))).float()
                out.append(f / f.norm(dim=-1, keepdim=True))
        return torch.cat(out)

    def text_embeds(self, prompts: list[str]):
        """(B, P) float32, L2-normalised (texts truncated to the model's length)."""
        import torch

        out = []
        with torch.no_grad():
            for a in range(0, len(prompts), self.batch_size):
                tok = self.processor(text=list(prompts[a:a + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_text, return_tensors="pt")
                f = self._features(self.model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device))).float()
                out.append(f / f.norm(dim=-1, keepdim=True))
        return torch.cat(out)

    def cosine(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """(B,) float64 cos(image_i, prompt_i)."""
        check_images(images, prompts)
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1).double().cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def processor_dir_for(name: str, model_dir: str, processor_path: str | None, processor_hub_id: str | None) -> str:
    """The model directory if it carries its processor, else the separate processor location
    (``processor_path`` option, ``GG_REWARD_<NAME>_PROCESSOR_PATH``, or the hub id from cache)."""
    from grpo_guard.models.loading import missing_files

    if not processor_path and not os.environ.get(f"GG_REWARD_{name.upper()}_PROCESSOR_PATH") \
            and not missing_files(model_dir, _PROCESSOR_FILES):
        return model_dir
    return reward_weights_dir(name, processor_path, processor_hub_id, required=_PROCESSOR_FILES,
                              suffix="PROCESSOR_PATH", what=f"{name} reward's CLIP processor")


class CLIPScoreReward:
    """``reward(images, prompts) -> (B,)`` cosine similarity of CLIP image and text embeddings."""

    name = "clipscore"
    hub_id = "openai/clip-vit-large-patch14"

    def __init__(self, path: str | None = None, *, scale: float = 1.0, **kwargs):
        model_dir = reward_weights_dir(self.name, path, self.hub_id)
        self.scorer = CLIPScorer(model_dir, **kwargs)
        self.scale = float(scale)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.scale * self.scorer.cosine(images, prompts)


def clipscore(**options) -> CLIPScoreReward:
    return CLIPScoreReward(**options)

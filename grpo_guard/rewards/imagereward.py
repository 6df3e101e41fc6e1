"""ImageReward (Xu et al. 2023), a gold metric of the paper (ALGORITHM.md §9: SD3.5-M base 1.06).

Architecture, as the official ``ImageReward.score``: BLIP ViT image tokens → the BLIP text
encoder with cross-attention over them → the [CLS] feature → MLP (768→1024→128→64→16→1) →
``(r − 0.16717) / 1.03334``.

The official checkpoint (``THUDM/ImageReward``: ``ImageReward.pt`` + ``med_config.json``) is a
plain torch state dict of the original BLIP code; the ``image-reward`` package downloads it at
run time and pulls in torchvision-based preprocessing. This reward instead loads a
**transformers-format** directory, set with ``GG_REWARD_IMAGEREWARD_PATH``:

- ``config.json`` + weights of a ``BlipForImageTextRetrieval`` (only ``vision_model`` and
  ``text_encoder`` are used), a tokenizer and a ``BlipImageProcessor`` config (224 px, bicubic,
  CLIP mean/std to match the official preprocessing);
- ``mlp_head.safetensors`` (or ``.pt``/``.pth``) with keys ``layers.{0,2,4,6,7}.*`` — the official
  ``mlp.*`` keys without the ``mlp.`` prefix (or give ``head_path`` /
  ``GG_REWARD_IMAGEREWARD_HEAD``).

Converting ``ImageReward.pt`` into that layout is not part of this project and the scores have
not been compared with the official package; the code path is tested with tiny random weights.

In a run config the same settings are per-reward options, which win over the variables:
``reward_options: {imagereward: {path: DIR, head_path: FILE}}`` (see ``grpo_guard.rewards.REGISTRY`` for each reward's options).
"""

from __future__ import annotations

import glob
import os

import numpy as np

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.rewards.aesthetic import load_head
from grpo_guard.rewards.weights import check_images, default_device, env_var, reward_weights_dir

MEAN, STD = 0.16717362830052426, 1.0333394966054072
TEXT_LENGTH = 35  # the official tokenizer call: padding="max_length", max_length=35


class ImageRewardReward:
    """``reward(images, prompts) -> (B,)`` normalised ImageReward score (about −2 … 2)."""

    name = "imagereward"

    def __init__(self, path: str | None = None, *, head_path: str | None = None, device: str | None = None,
                 batch_size: int = 16):
        import torch
        from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

        model_dir = reward_weights_dir(self.name, path, None,
                                       what="imagereward model (a transformers-format BLIP of ImageReward)")
        head_path = head_path or os.environ.get(env_var(self.name, "HEAD"))
        if not head_path:
            found = sorted(glob.glob(os.path.join(glob.escape(model_dir), "mlp_head.*")))
            head_path = found[0] if found else None
        if not head_path or not os.path.isfile(head_path):
            raise ModelNotFoundError(
                f"The imagereward MLP head was not found (looked for mlp_head.safetensors/.pt in {model_dir}); "
                f"save the official mlp.* weights there without the 'mlp.' prefix, or set "
                f"{env_var(self.name, 'HEAD')} to that file.")
        self.device = torch.device(default_device(device))
        blip = BlipForImageTextRetrieval.from_pretrained(model_dir).eval().requires_grad_(False)
        self.vision, self.text = blip.vision_model.to(self.device), blip.text_encoder.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.image_processor = BlipImageProcessor.from_pretrained(model_dir)
        self.head = load_head(head_path).to(self.device)
        if self.head.layers[0].in_features != blip.config.text_config.hidden_size:
            raise ValueError(f"the imagereward head takes {self.head.layers[0].in_features}-d features but the "
                             f"BLIP text encoder gives {blip.config.text_config.hidden_size}-d")
        self.batch_size = int(batch_size)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        check_images(images, prompts)
        out = []
        with torch.no_grad():
            for a in range(0, len(prompts), self.batch_size):
                imgs, txt = list(images[a:a + self.batch_size]), list(prompts[a:a + self.batch_size])
                px = self.image_processor(images=imgs, return_tensors="pt")["pixel_values"].to(self.device)
                image_embeds = self.vision(pixel_values=px).last_hidden_state
                tok = self.tokenizer(txt, padding="max_length", truncation=True, max_length=TEXT_LENGTH,
                                     return_tensors="pt")
                feats = self.text(input_ids=tok["input_ids"].to(self.device),
                                  attention_mask=tok["attention_mask"].to(self.device),
                                  encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long,
                                                                    device=self.device)).last_hidden_state[:, 0]
                out.append((self.head.layers(feats.float()).squeeze(-1) - MEAN) / STD)
        return torch.cat(out).double().cpu().numpy()


def imagereward(**options) -> ImageRewardReward:
    return ImageRewardReward(**options)

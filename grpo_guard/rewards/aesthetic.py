"""LAION aesthetic predictor v2 ("improved aesthetic predictor"): an MLP on the L2-normalised
CLIP ViT-L/14 image embedding, score ≈ 1–10.

- CLIP: ``openai/clip-vit-large-patch14`` from the HF cache, or ``GG_REWARD_AESTHETIC_PATH``.
- Head: the MLP weights file ``sac+logos+ava1-l14-linearMSE.pth`` (or a ``.safetensors`` with the
  same keys ``layers.{0,2,4,6,7}.{weight,bias}``), from the ``head_path`` option or
  ``GG_REWARD_AESTHETIC_HEAD``. It has no hub home, so it is never looked up or downloaded.
The MLP layout (768→1024→128→64→16→1, dropout between the first four) is built from the shapes
in the file, so the official file loads as is.

In a run config the same settings are per-reward options, which win over the variables:
``reward_options: {aesthetic: {path: DIR, head_path: FILE}}`` (see ``grpo_guard.rewards.REGISTRY`` for each reward's options).
"""

from __future__ import annotations

import os

import numpy as np

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.rewards.clip import CLIPScorer
from grpo_guard.rewards.weights import env_var, reward_weights_dir

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
_LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")


def aesthetic_mlp(state: dict):
    """The predictor's ``nn.Sequential`` under ``layers``, sized from ``state`` and loaded."""
    import torch
    from torch import nn

    missing = [f"{k}.weight" for k in _LINEAR_KEYS if f"{k}.weight" not in state]
    if missing:
        raise ValueError(f"not an aesthetic-predictor head: missing {', '.join(missing)}")
    dims = [tuple(state[f"{k}.weight"].shape) for k in _LINEAR_KEYS]  # (out, in) each
    lin = [nn.Linear(i, o) for o, i in dims]
    layers = nn.Sequential(lin[0], nn.Dropout(0.2), lin[1], nn.Dropout(0.2), lin[2], nn.Dropout(0.1), lin[3], lin[4])
    head = nn.Module()
    head.layers = layers
    head.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    return head.eval().requires_grad_(False)


def load_head(path: str):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return aesthetic_mlp(load_file(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return aesthetic_mlp(state.get("state_dict", state))


class AestheticReward:
    """``reward(images, prompts) -> (B,)`` predicted aesthetic score (prompts are ignored)."""

    name = "aesthetic"
    hub_id = "openai/clip-vit-large-patch14"

    def __init__(self, path: str | None = None, *, head_path: str | None = None, **kwargs):
        var = env_var(self.name, "HEAD")
        head_path = head_path or os.environ.get(var)
        if not head_path or not os.path.isfile(head_path):
            where = f"at {head_path!r}" if head_path else "(none given)"
            raise ModelNotFoundError(
                f"The aesthetic reward's MLP head file {where} was not found; set {var} to the "
                f"downloaded {HEAD_FILE} (LAION improved-aesthetic-predictor) or an equivalent .safetensors.")
        model_dir = reward_weights_dir(self.name, path, self.hub_id)
        self.scorer = CLIPScorer(model_dir, **kwargs)
        self.head = load_head(head_path).to(self.scorer.device)
        dim = self.head.layers[0].in_features
        proj = int(self.scorer.model.config.projection_dim)
        if dim != proj:
            raise ValueError(f"the aesthetic head takes {dim}-d embeddings but the CLIP model at {model_dir} "
                             f"gives {proj}-d; the official head needs CLIP ViT-L/14 (768)")

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        from grpo_guard.rewards.weights import check_images

        check_images(images, prompts)
        with torch.no_grad():
            emb = self.scorer.image_embeds(images)
            return self.head.layers(emb).squeeze(-1).double().cpu().numpy()


def aesthetic(**options) -> AestheticReward:
    return AestheticReward(**options)

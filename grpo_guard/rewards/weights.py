"""Where a model-based reward finds its weights, offline-first.

Order, for a reward named ``NAME`` (e.g. ``pickscore``):

1. the ``path`` option given to the reward factory;
2. the environment variable ``GG_REWARD_<NAME>_PATH`` (upper case, ``-`` → ``_``);
3. the reward's standard hub id, looked up in the local Hugging Face cache only (never
   downloaded: the run config did not ask for it).

A path option or variable may itself be a hub id; that one is downloaded unless
``HF_HUB_OFFLINE`` is set. Anything missing raises ``ModelNotFoundError`` with one sentence
naming the variable to set, before any weights are loaded.
"""

from __future__ import annotations

import os

from grpo_guard.models.loading import HF_MODEL_REQUIRED, resolve_model_dir


def env_var(name: str, suffix: str = "PATH") -> str:
    return f"GG_REWARD_{name.upper().replace('-', '_')}_{suffix}"


def reward_weights_dir(name: str, path: str | None = None, hub_id: str | None = None, *,
                       required: tuple[str, ...] = HF_MODEL_REQUIRED, suffix: str = "PATH",
                       what: str | None = None) -> str:
    """A local directory with the weights of reward ``name`` (see the module docstring)."""
    var = env_var(name, suffix)
    what = what or f"{name} reward model"
    given = path or os.environ.get(var)
    if given:
        return resolve_model_dir(given, required, what=what, setting=var)
    if not hub_id:
        from grpo_guard.models.base import ModelNotFoundError

        raise ModelNotFoundError(
            f"The {what} has no standard download and no local copy was given; set {var} to a "
            f"local directory that holds it ({', '.join(r.replace('|', ' or ') for r in required)}).")
    return resolve_model_dir(hub_id, required, what=what, setting=var, allow_download=False)


def default_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_images(images, prompts) -> None:
    """The reward contract: uint8 (B, H, W, 3) and B prompts."""
    import numpy as np

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"rewards take uint8 images (B, H, W, 3), got {images.dtype} {images.shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")

"""Learned scorers of the toy world, trained by ``grpo-guard toy pretrain`` next to the base model.

- **Fidelity model** (``toy_fidelity/``, a gold evaluator): a small CNN regressing how clean a
  32×32 image is, ``fidelity = sigmoid(logit) ∈ [0, 1]``. Trained on clean renders and their VAE
  reconstructions (target 1, so the base model's slightly soft samples score high) against graded
  corruptions (target 1 − severity): flooding the background with the foreground colour, Gaussian
  noise, blur, colour casts, high-frequency stripes/checkerboards, ghosted double images and flat
  single-colour frames. It drops for flooded, noisy and degenerate images.
- **Shape/colour classifier** (``toy_classifier/``, a learnable *proxy*): a small CNN with three
  heads (shape, foreground colour, background colour) trained on clean renders and VAE
  reconstructions with label smoothing 0.1. Its confidence in the prompt's labels has legitimate
  headroom (better shapes) and can also be pushed by artefacts the classifier never saw — the
  over-optimization experiment's proxy (TOYWORLD.md).

Both take uint8 (B, 32, 32, 3) images. Each directory holds ``config.json`` and
``model.safetensors``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from grpo_guard.toyworld.data import PALETTE_RGB, SIZE, Scene, render, shape_mask, to_model_range
from grpo_guard.toyworld.prompts import COLORS, PALETTE, SHAPES

FIDELITY_DIR = "toy_fidelity"
CLASSIFIER_DIR = "toy_classifier"


class ConvNet(nn.Module):
    """3×32×32 in [-1, 1] -> ``outputs`` logits. Three 3×3 convs with stride 2 and one more 3×3,
    then one hidden linear layer; about 0.13 M parameters at width 32."""

    def __init__(self, outputs: int, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1), nn.GELU(),          # 16×16
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),      # 8×8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 4×4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 64), nn.GELU(), nn.Linear(64, outputs))
        self.config = {"outputs": outputs, "width": width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise ValueError(f"expected uint8 images (B, {SIZE}, {SIZE}, 3), got shape {images.shape}")
    return torch.from_numpy(to_model_range(images))


def save_scorer(model: ConvNet, directory: str, kind: str, extra: dict | None = None,
                dtype: torch.dtype = torch.float16) -> None:
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as fh:
        json.dump({"kind": kind, **model.config, **(extra or {})}, fh, indent=1)


def load_scorer(directory: str, kind: str) -> tuple[ConvNet, dict]:
    """Load a scorer in float32 eval mode. Missing files raise ``FileNotFoundError`` naming them."""
    from safetensors.torch import load_file

    cfg_path, w_path = os.path.join(directory, "config.json"), os.path.join(directory, "model.safetensors")
    for p in (cfg_path, w_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(
                f"The toy {kind} model is missing {p}: run `grpo-guard toy pretrain --out DIR` "
                f"(it writes DIR/{os.path.basename(directory)}/) or reinstall the package.")
    with open(cfg_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    if cfg.get("kind") != kind:
        raise ValueError(f"{directory} holds a {cfg.get('kind')!r} model, not a {kind!r} model")
    model = ConvNet(cfg["outputs"], cfg.get("width", 32))
    model.load_state_dict({k: v.float() for k, v in load_file(w_path).items()})
    return model.eval().requires_grad_(False), cfg


# ---- fidelity ------------------------------------------------------------------------------

@torch.no_grad()
def fidelity_scores(model: ConvNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    x = images_to_tensor(images)
    out = [torch.sigmoid(model(x[i:i + batch_size])[:, 0]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


CORRUPTIONS = ("flood", "noise", "blur", "cast", "stripes", "ghost", "flat")


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    pad = k // 2
    p = np.pad(img.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(img, dtype=np.float32)
    for dy in range(k):
        for dx in range(k):
            out += p[dy:dy + SIZE, dx:dx + SIZE]
    return out / (k * k)


def corrupt(scene: Scene, clean: np.ndarray, rng: np.random.Generator, kind: str | None = None
            ) -> tuple[np.ndarray, float]:
    """A corrupted version of ``clean`` (uint8 render of ``scene``) and its fidelity target."""
    kind = kind or CORRUPTIONS[rng.integers(len(CORRUPTIONS))]
    img = clean.astype(np.float32)
    fg = np.array(PALETTE[scene.fg], np.float32)
    if kind == "flood":
        # the foreground colour spreads over a growing disk (plus random blobs): the proxy's hack
        flood = shape_mask("circle", *rng.uniform(4, 28, size=2), rng.uniform(6, 34))
        for _ in range(rng.integers(0, 3)):
            flood |= shape_mask("circle", *rng.uniform(0, 32, size=2), rng.uniform(3, 12))
        bg_pix = ~shape_mask(scene.shape, scene.cx, scene.cy, scene.r)
        newly = flood & bg_pix
        img[newly] = fg
        share = newly.sum() / max(1, bg_pix.sum())
        target = 1.0 - min(1.0, 1.6 * share)
    elif kind == "noise":
        sigma = rng.uniform(8, 110)
        img = img + rng.normal(0, sigma, img.shape)
        target = 1.0 - min(1.0, sigma / 45.0)
    elif kind == "blur":
        k = int(rng.choice([3, 5, 7]))
        img = _box_blur(img, k)
        target = {3: 0.6, 5: 0.25, 7: 0.0}[k]
    elif kind == "cast":
        shift = rng.uniform(-90, 90, size=3)
        img = img + shift
        target = 1.0 - min(1.0, np.abs(shift).max() / 70.0)
    elif kind == "stripes":
        amp = rng.uniform(8, 80)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        period = int(rng.integers(2, 5))
        pattern = ((xx // period + (yy // period) * rng.integers(0, 2)) % 2) * 2 - 1
        img = img + amp * pattern[..., None] * rng.uniform(0.3, 1.0, size=3)
        target = 1.0 - min(1.0, amp / 50.0)
    elif kind == "ghost":
        other = Scene(scene.fg, SHAPES[rng.integers(3)], scene.bg, *rng.uniform(8, 24, size=2), rng.uniform(5, 11))
        a = rng.uniform(0.15, 0.85)
        img = (1 - a) * img + a * render(other).astype(np.float32)
        target = 1.0 - min(1.0, 2.5 * min(a, 1 - a))
    elif kind == "flat":
        img[:] = PALETTE_RGB[rng.integers(len(COLORS))] if rng.random() < 0.6 else rng.uniform(0, 255, size=3)
        target = 0.0
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return np.clip(img, 0, 255).round().astype(np.uint8), float(max(0.0, target))


# ---- shape/colour classifier -----------------------------------------------------------------

CLASSIFIER_OUTPUTS = len(SHAPES) + 2 * len(COLORS)


def split_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, k = len(SHAPES), len(COLORS)
    return logits[:, :s], logits[:, s:s + k], logits[:, s + k:]


@torch.no_grad()
def classifier_probs(model: ConvNet, images: np.ndarray, batch_size: int = 256
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax probabilities (shape (B,3), fg (B,8), bg (B,8))."""
    x = images_to_tensor(images)
    parts: list[list[torch.Tensor]] = [[], [], []]
    for i in range(0, len(x), batch_size):
        for j, lg in enumerate(split_logits(model(x[i:i + batch_size]))):
            parts[j].append(torch.softmax(lg, -1))
    return tuple(torch.cat(p).double().numpy() for p in parts)  # type: ignore[return-value]

"""Rendering the toy world: one flat-coloured circle, square or triangle on a flat background,
32×32 RGB, random centre and size. numpy only; a render takes microseconds.

Geometry (pixel centres at +0.5): radius r ∈ [7, 11], centre in [12, 20]². A circle has radius
r; a square half-side 0.85·r; a triangle points up with apex (cx, cy − r) and base 2r at
y = cy + r. Filled share of the bounding box: circle π/4, square 1, triangle 1/2 — what the
analytic checker (:mod:`grpo_guard.toyworld.checker`) measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from grpo_guard.toyworld.prompts import PALETTE, all_combinations, make_prompt, train_combinations

SIZE = 32
RADIUS = (7.0, 11.0)
CENTER = (12.0, 20.0)
PALETTE_RGB = np.array(list(PALETTE.values()), dtype=np.uint8)  # (8, 3), in COLORS order

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


@dataclass(frozen=True)
class Scene:
    fg: str
    shape: str
    bg: str
    cx: float
    cy: float
    r: float

    @property
    def prompt(self) -> str:
        return make_prompt(self.fg, self.shape, self.bg)


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean (32, 32) mask of a shape."""
    if shape == "circle":
        return (_XX - cx) ** 2 + (_YY - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(_XX - cx) <= h) & (np.abs(_YY - cy) <= h)
    if shape == "triangle":
        top, bottom = cy - r, cy + r
        frac = (_YY - top) / (bottom - top)
        inside = (_YY - top >= 0) & (bottom - _YY >= 0)
        return inside & (np.abs(_XX - cx) <= frac * r)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> np.ndarray:
    """uint8 (32, 32, 3)."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = PALETTE[scene.bg]
    img[shape_mask(scene.shape, scene.cx, scene.cy, scene.r)] = PALETTE[scene.fg]
    return img


def random_scene(rng: np.random.Generator, combo: tuple[str, str, str]) -> Scene:
    cx, cy = rng.uniform(*CENTER, size=2)
    return Scene(combo[0], combo[1], combo[2], float(cx), float(cy), float(rng.uniform(*RADIUS)))


def sample_scenes(rng: np.random.Generator, n: int, split: str = "train",
                  combos: Sequence[tuple[str, str, str]] | None = None) -> list[Scene]:
    """``n`` random scenes over the combinations of ``split`` ("train" or "all")."""
    if combos is None:
        combos = train_combinations() if split == "train" else all_combinations()
    idx = rng.integers(0, len(combos), size=n)
    return [random_scene(rng, combos[i]) for i in idx]


def render_batch(scenes: Sequence[Scene]) -> np.ndarray:
    """uint8 (B, 32, 32, 3)."""
    return np.stack([render(s) for s in scenes]) if scenes else np.zeros((0, SIZE, SIZE, 3), np.uint8)


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1], the VAE's input range."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


def from_model_range(x: np.ndarray) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded as the pipelines do."""
    x = np.clip(np.asarray(x, np.float32) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return (x * 255).round().astype(np.uint8)

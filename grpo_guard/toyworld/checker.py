"""Analytic checker: what is in a toy image, by rules (numpy only, deterministic, < 0.1 ms per image).

1. Every pixel gets its nearest palette colour (Euclidean RGB).
2. Background = the most common label on the 1-pixel border.
3. Foreground = the most common label among the other pixels (none if fewer than
   ``MIN_FG_PIXELS`` remain).
4. Shape, from the foreground mask after dropping pixels with fewer than two 4-neighbours in
   the mask (stray specks): ``fill`` = mask area / bounding-box area (circle π/4 ≈ 0.79,
   square 1, triangle 1/2) and ``top`` = share of the mask in the upper half of its bounding box
   (0.5 for circle and square, 0.25 for the upward triangle). The nearest prototype in
   (fill, top) wins. A mask smaller than ``MIN_FG_PIXELS`` has no shape.

Rendered ground truth is classified correctly (the tests check all 168 combinations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grpo_guard.toyworld.data import PALETTE_RGB
from grpo_guard.toyworld.prompts import COLORS, SHAPES, parse_prompt

MIN_FG_PIXELS = 12
_PAL = PALETTE_RGB.astype(np.float32)
# (fill, top) prototypes in SHAPES order, measured on renders; top is weighted ×2 in the distance.
_PROTOTYPES = np.array([[0.79, 0.50], [1.00, 0.50], [0.58, 0.285]], np.float32)
_PAL_SQ = (_PAL ** 2).sum(1)
_TOP_WEIGHT = 2.0


@dataclass
class Checked:
    """Per-image findings; indices into COLORS / SHAPES, −1 for none."""

    fg: np.ndarray      # (B,) int
    bg: np.ndarray      # (B,) int
    shape: np.ndarray   # (B,) int
    fill: np.ndarray    # (B,) float, NaN without a shape
    top: np.ndarray     # (B,) float, NaN without a shape
    fg_share: np.ndarray  # (B,) float: share of pixels labelled with the found fg colour

    def names(self, i: int) -> tuple[str | None, str | None, str | None]:
        def n(seq, k):
            return seq[k] if k >= 0 else None
        return n(COLORS, int(self.fg[i])), n(SHAPES, int(self.shape[i])), n(COLORS, int(self.bg[i]))


def palette_labels(images: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> int (B, H, W): index of the nearest palette colour."""
    x = np.asarray(images, np.float32)
    d = _PAL_SQ - 2.0 * (x @ _PAL.T)  # |x - p|² minus the per-pixel constant |x|²
    return d.argmin(-1)


def _row_counts(lab: np.ndarray, k: int) -> np.ndarray:
    """(B, N) labels -> (B, k) counts."""
    b = lab.shape[0]
    return np.bincount((lab + k * np.arange(b)[:, None]).ravel(), minlength=b * k).reshape(b, k)


def _clean(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    n4 = p[:-2, 1:-1].astype(np.int8) + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    return mask & (n4 >= 2)


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(fill, top) of a boolean (H, W) mask; NaNs if it is too small."""
    m = _clean(mask)
    if m.sum() < MIN_FG_PIXELS:
        return float("nan"), float("nan")
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = m[y0:y1, x0:x1]
    h = y1 - y0
    area = box.sum()
    upper = box[: h // 2].sum() + (box[h // 2].sum() * 0.5 if h % 2 else 0.0)
    return float(area / box.size), float(upper / area)


def classify_shape(fill: float, top: float) -> int:
    if not np.isfinite(fill):
        return -1
    d = (_PROTOTYPES[:, 0] - fill) ** 2 + _TOP_WEIGHT * (_PROTOTYPES[:, 1] - top) ** 2
    return int(d.argmin())


def check(images: np.ndarray) -> Checked:
    """Analyse uint8 (B, H, W, 3) images."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
    lab = palette_labels(images)
    b = lab.shape[0]
    k = len(COLORS)
    border = np.concatenate([lab[:, 0, :], lab[:, -1, :], lab[:, 1:-1, 0], lab[:, 1:-1, -1]], axis=1)
    bg = _row_counts(border, k).argmax(1)
    flat = lab.reshape(b, -1)
    counts = _row_counts(flat, k)  # (B, K)
    counts_nobg = counts.copy()
    counts_nobg[np.arange(b), bg] = 0
    fg = counts_nobg.argmax(1)
    fg = np.where(counts_nobg.max(1) >= MIN_FG_PIXELS, fg, -1)
    shape = np.full(b, -1, np.int64)
    fill = np.full(b, np.nan, np.float32)
    top = np.full(b, np.nan, np.float32)
    for i in range(b):
        if fg[i] >= 0:
            fill[i], top[i] = shape_features(lab[i] == fg[i])
            shape[i] = classify_shape(fill[i], top[i])
    share = np.where(fg >= 0, counts[np.arange(b), np.maximum(fg, 0)] / flat.shape[1], 0.0)
    return Checked(fg=fg, bg=bg, shape=shape, fill=fill, top=top, fg_share=share.astype(np.float32))


def targets(prompts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fg, shape, bg) index arrays for toy prompts; ``ValueError`` names a non-toy prompt."""
    parsed = [parse_prompt(p) for p in prompts]
    return (np.array([COLORS.index(p[0]) for p in parsed]), np.array([SHAPES.index(p[1]) for p in parsed]),
            np.array([COLORS.index(p[2]) for p in parsed]))


def correctness(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per-image 0/1 float arrays ``shape``, ``fg_color``, ``bg_color`` and their mean ``alignment``."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    fg_t, shape_t, bg_t = targets(prompts)
    c = check(images)
    out = {"shape": (c.shape == shape_t).astype(np.float64),
           "fg_color": (c.fg == fg_t).astype(np.float64),
           "bg_color": (c.bg == bg_t).astype(np.float64)}
    out["alignment"] = (out["shape"] + out["fg_color"] + out["bg_color"]) / 3.0
    return out

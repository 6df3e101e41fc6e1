"""``null_noise``: a reward with no signal, the control of an over-optimisation experiment.

Each image scores a uniform number in [0, 1) drawn from a hash of its pixels (and ``seed``), so the
same image always scores the same (a resumed run sees the same rewards) while the score says
nothing about the image. Training on it shows how much the gold metrics fall from optimisation
noise alone: whatever they lose beyond that under a real proxy is over-optimisation.
"""

from __future__ import annotations

import hashlib

import numpy as np


class NullNoise:
    name = "null_noise"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"expected images (B, H, W, C), got shape {images.shape}")
        out = np.empty(len(images), np.float64)
        for i, img in enumerate(images):
            digest = hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=8,
                                     key=self.seed.to_bytes(8, "little", signed=True)).digest()
            out[i] = int.from_bytes(digest, "little") / 2.0**64
        return out


def null_noise(seed: int = 0) -> NullNoise:
    return NullNoise(seed)

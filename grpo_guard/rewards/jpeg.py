"""JPEG (in)compressibility, as in DDPO: model-free, any backbone.

``jpeg_compressibility`` = −(size in kB of the image saved as JPEG at quality 95);
``jpeg_incompressibility`` = +size in kB. Flat images compress well, noise does not.
About 0.3 ms per image at 64–256 px (STACK.md §5).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg_kilobytes(images: np.ndarray, quality: int = 95) -> np.ndarray:
    """Size in kB (1000 bytes) of each uint8 (H, W, 3) image saved as JPEG."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
    out = np.empty(len(images), np.float64)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
        out[i] = buf.tell() / 1000.0
    return out


class JpegSize:
    def __init__(self, sign: float, name: str, quality: int = 95):
        self.sign, self.name, self.quality = sign, name, int(quality)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.sign * jpeg_kilobytes(images, self.quality)


def compressibility(quality: int = 95) -> JpegSize:
    return JpegSize(-1.0, "jpeg_compressibility", quality)


def incompressibility(quality: int = 95) -> JpegSize:
    return JpegSize(1.0, "jpeg_incompressibility", quality)

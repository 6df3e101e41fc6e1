"""OCR accuracy for text rendering (Flow-GRPO's TextRender proxy, ALGORITHM.md §9).

reward = 1 − min(edit distance, |target|) / |target|, where the target is the prompt's quoted
text and the recognised text is everything the OCR engine reads in the image, both lower-cased
with spaces removed, and 1 when the target appears anywhere in the recognised text (as Flow-GRPO's
``flow_grpo/ocr.py`` scores it: other text in the image is not penalised). A prompt without quoted
text scores 0.

The engine is ``rapidocr-onnxruntime`` with the PP-OCRv4 detection/recognition models bundled in
its wheel (STACK.md §5): nothing is downloaded (install with the ``ocr`` extra).
"""

from __future__ import annotations

import re

import numpy as np

from grpo_guard.rewards.weights import check_images

_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')


def quoted_text(prompt: str) -> str:
    """The text a prompt asks to render: its double-quoted parts, joined by spaces."""
    parts = [a or b for a, b in _QUOTED.findall(prompt)]
    return " ".join(p for p in parts if p)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_accuracy(recognised: str, target: str) -> float:
    """1 − normalised edit distance between the recognised text and the target, in [0, 1]; 1 when
    the target is contained in the recognised text (Flow-GRPO's ``if prompt in recognized_text``)."""
    t, r = _normalise(target), _normalise(recognised)
    if not t:
        return 0.0
    if t in r:
        return 1.0
    return 1.0 - min(edit_distance(r, t), len(t)) / len(t)


class OCRReward:
    """``reward(images uint8 (B, H, W, 3), prompts) -> (B,)`` OCR accuracy of the quoted text."""

    name = "ocr"

    def __init__(self, min_score: float = 0.0):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            raise ImportError("the ocr reward needs rapidocr-onnxruntime (it bundles its models): "
                              "pip install 'grpo-guard-studio[ocr]'") from None
        self.engine = RapidOCR()
        self.min_score = float(min_score)

    def read(self, image: np.ndarray) -> str:
        """All text the engine finds in one uint8 (H, W, 3) RGB image, boxes in reading order."""
        result, _ = self.engine(np.ascontiguousarray(image[..., ::-1]))  # RapidOCR expects BGR like cv2
        return " ".join(text for _, text, score in (result or []) if float(score) >= self.min_score)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        check_images(images, prompts)
        out = np.zeros(len(prompts), dtype=np.float64)
        for i, (img, prompt) in enumerate(zip(images, prompts, strict=True)):
            target = quoted_text(prompt)
            if target:
                out[i] = text_accuracy(self.read(img), target)
        return out


def ocr(**options) -> OCRReward:
    return OCRReward(**options)

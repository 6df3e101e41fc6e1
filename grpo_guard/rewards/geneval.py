"""GenEval-style composition checks (Ghosh et al. 2023): object presence, counts, colours and
relative positions, scored from an object detector's output.

**No detector is available offline.** GenEval uses a Mask2Former (mmdetection) instance
segmenter plus CLIP for colours; neither ships weights in a pip package. This module therefore
implements the *rules* on detections (:func:`score_geneval`) and a colour check on a given mask
(:func:`mask_colour`, nearest named colour of the median masked pixel — an approximation of
GenEval's CLIP colour classifier, not the same thing). The ``geneval`` reward needs a detector
passed in code (``build_reward("geneval", detector=fn)``), which a run config cannot name; built
without one it raises a clear error. The toy world's palette classifier is the offline
colour/shape check that actually runs end to end.

Metadata follows GenEval's ``evaluation_metadata.jsonl``: ``{"tag": ..., "include": [{"class":
"dog", "count": 2, "color": "red", "position": ["left of", 0]}], "exclude": [{"class": "dog",
"count": 3}], "prompt": ...}``; ``position`` refers to the index of another ``include`` entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from grpo_guard.rewards.weights import check_images, env_var

# GenEval's colour names with representative sRGB values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (40, 170, 50),
    "blue": (30, 70, 220), "purple": (130, 40, 170), "pink": (245, 150, 190), "brown": (125, 75, 35),
    "black": (15, 15, 15), "white": (245, 245, 245),
}
POSITION_THRESHOLD = 0.1  # GenEval: relative offset needed beyond the objects' extent


@dataclass
class Detection:
    """One detected instance: class name, confidence, box (x0, y0, x1, y1) in pixels, optional mask (H, W) bool."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None


Detector = Callable[[np.ndarray], list[Detection]]


def mask_colour(image: np.ndarray, mask: np.ndarray, colours: dict[str, tuple[int, int, int]] = COLOURS) -> str:
    """The named colour nearest (RGB distance) to the median of ``image``'s masked pixels."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2] or not mask.any():
        raise ValueError("mask_colour needs a non-empty (H, W) mask matching the image")
    med = np.median(image[mask].astype(np.float64), axis=0)
    names = list(colours)
    ref = np.array([colours[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((ref - med) ** 2).sum(1)))]


def _relation(a: Detection, b: Detection, relation: str) -> bool:
    """Is ``a`` ``relation`` ``b`` (GenEval: centre offset beyond a margin of the sizes)?"""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    dx = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    dy = (ay0 + ay1) / 2 - (by0 + by1) / 2
    mx = POSITION_THRESHOLD * ((ax1 - ax0) + (bx1 - bx0)) / 2
    my = POSITION_THRESHOLD * ((ay1 - ay0) + (by1 - by0)) / 2
    return {"left of": dx < -mx, "right of": dx > mx, "above": dy < -my, "below": dy > my}[relation]


def score_geneval(metadata: dict, detections: Sequence[Detection], image: np.ndarray | None = None,
                  threshold: float = 0.3) -> bool:
    """True when the detections satisfy every ``include`` (count ≥ n, colour, position) and no
    ``exclude`` (count ≥ n) of GenEval ``metadata``."""
    dets = [d for d in detections if d.score >= threshold]
    found: list[list[Detection]] = []
    for req in metadata.get("include", []):
        objs = [d for d in dets if d.label == req["class"]]
        if "color" in req:
            if image is None:
                raise ValueError("colour checks need the image")
            objs = [d for d in objs if d.mask is not None and mask_colour(image, d.mask) == req["color"]]
        if len(objs) < int(req.get("count", 1)):
            return False
        found.append(objs)
    for i, req in enumerate(metadata.get("include", [])):
        if "position" in req:
            relation, j = req["position"]
            if not any(_relation(a, b, relation) for a in found[i] for b in found[int(j)]):
                return False
    return all(sum(d.label == ex["class"] for d in dets) < int(ex["count"]) for ex in metadata.get("exclude", []))


class GenEvalReward:
    """``reward(images, prompts) -> (B,)`` 1.0 where the GenEval rules hold, else 0.0.

    Args:
        detector: ``fn(image uint8 (H, W, 3)) -> list[Detection]`` — required (none ships offline).
        metadata: prompt -> GenEval metadata dict, or a path to ``evaluation_metadata.jsonl``
            (default ``GG_REWARD_GENEVAL_METADATA``).
    """

    name = "geneval"

    def __init__(self, detector: Detector | None = None, metadata: dict | str | None = None,
                 threshold: float = 0.3):
        if detector is None:
            raise RuntimeError(
                "The geneval reward needs an object detector and none is available offline (GenEval uses a "
                "Mask2Former from mmdetection, whose weights no pip package bundles); pass one in code with "
                "build_reward('geneval', detector=fn, metadata=...), or train on the ocr / toy rewards instead.")
        metadata = metadata or os.environ.get(env_var(self.name, "METADATA"))
        if isinstance(metadata, str):
            with open(metadata, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            metadata = {r["prompt"]: r for r in rows}
        if not metadata:
            raise ValueError(f"the geneval reward needs per-prompt metadata (a dict or {env_var(self.name, 'METADATA')})")
        self.detector, self.metadata, self.threshold = detector, metadata, float(threshold)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        check_images(images, prompts)
        out = np.zeros(len(prompts), dtype=np.float64)
        for i, (img, p) in enumerate(zip(images, prompts, strict=True)):
            meta = self.metadata.get(p)
            if meta is None:
                raise KeyError(f"no GenEval metadata for prompt {p!r}")
            out[i] = float(score_geneval(meta, self.detector(img), img, self.threshold))
        return out


def geneval(**options) -> GenEvalReward:
    return GenEvalReward(**options)

"""GenEval's rules (Ghosh et al. 2023) on detected objects: the one place for thresholds, object
selection, relative position, the strict score and the partial credit. No torch: the detector and
the colour classifier are passed in (``grpo_guard.rewards.geneval`` supplies Mask2Former + CLIP).

Faithful to ``djghosh13/geneval`` ``evaluation/evaluate_images.py``:

- detections with score > 0.3 (> 0.9 for the ``counting`` family) are kept, at most 16 per class,
  most confident first; no NMS unless ``nms_threshold`` < 1 (GenEval's default ``max_overlap`` 1.0);
- an ``include`` {class, count} holds when at least ``count`` objects of the class are found; its
  colour is checked on the ``count`` most confident of them (all must have the colour); its
  position must hold between every such object and every object of the target ``include``;
- relative position: the centre offset shrunk by 0.1 × (sum of both sizes) per axis, normalised by
  the raw offset's length; a component beyond ±0.5 names the relation;
- an ``exclude`` {class, count} fails when ``count`` or more objects of the class are found.

Two partial credits, both means of one term per condition of the ``include`` list:

- ``flow_grpo``: exactly Flow-GRPO's RL reward (``reward_server/gen_eval.py`` ``evaluate_reward`` of
  yifan123/reward-server). Per include {class, count n}: a count term ``1 - |n - found| / n`` over
  *all* kept objects (negative when more than 2n are found); when the count is not exact, one 0
  term if the include asks a colour or a position; when exact, a colour term
  ``1 - |n - right colour| / n`` and, if the colour held, a position term: 0 with no target, 1
  when every object is in relation with every target object, and 0 *then* 1 when one pair fails
  (its loop appends 0, breaks, then appends 1). Targets are the includes whose count (and colour
  and position) held exactly. Excludes take no part.
- ``partial``: ours, the same terms clipped at 0 and a failed position scoring 0 only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from grpo_guard.prompts.geneval_vocab import COCO_CLASSES, COLOUR_NAMES, RELATIONS  # noqa: F401  (re-exported)

# Representative sRGB values: only the torch-free fallback classifier (mask_colour) uses them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (40, 170, 50),
    "blue": (30, 70, 220), "purple": (130, 40, 170), "pink": (245, 150, 190), "brown": (125, 75, 35),
    "black": (15, 15, 15), "white": (245, 245, 245),
}
FAMILIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

THRESHOLD = 0.3           # detection score kept (GenEval --options threshold)
COUNTING_THRESHOLD = 0.9  # ... for the counting family (counting_threshold)
MAX_OBJECTS = 16          # per class, most confident first (max_objects)
NMS_THRESHOLD = 1.0       # box IoU at which a less confident same-class box is dropped; 1 = never (max_overlap)
DETECTOR_SCALE = (1333, 800)  # mmdet's test scale (longest, shortest side): the detector's input size
POSITION_THRESHOLD = 0.1  # share of the summed object sizes an offset must exceed (position_threshold)

# Names checkpoints use for the same COCO classes (detectron2 / transformers id2label spellings).
CLASS_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                 "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
                 "diningtable": "dining table", "tvmonitor": "tv", "hair dryer": "hair drier"}


def geneval_class(label: str) -> str:
    """A detector's label in GenEval's spelling (``"mouse"`` -> ``"computer mouse"``)."""
    name = label.strip().lower().replace("_", " ").replace("-merged", "").replace("-other", "")
    return CLASS_ALIASES.get(name, name)


@dataclass
class Detection:
    """One detected instance: class name, confidence, box (x0, y0, x1, y1) in pixels, optional mask (H, W) bool."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None


# colour_of(image, objects, class name) -> one colour name per object
ColourClassifier = Callable[[np.ndarray, Sequence[Detection], str], list[str]]


@dataclass
class GenEvalScore:
    """``strict``: GenEval's verdict (every include and exclude holds). ``partial``: our partial
    credit in [0, 1]; ``flow_grpo``: Flow-GRPO's (can be negative). ``reasons``: why strict failed,
    one line per broken condition."""

    strict: bool
    partial: float
    flow_grpo: float = 0.0
    reasons: list[str] = field(default_factory=list)


def mask_colour(image: np.ndarray, mask: np.ndarray, colours: Mapping[str, tuple[int, int, int]] = COLOURS) -> str:
    """The named colour nearest (RGB distance) to the median of ``image``'s masked pixels: a
    torch-free stand-in for GenEval's CLIP colour classifier (not the same thing)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2] or not mask.any():
        raise ValueError("mask_colour needs a non-empty (H, W) mask matching the image")
    med = np.median(image[mask].astype(np.float64), axis=0)
    names = list(colours)
    ref = np.array([colours[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((ref - med) ** 2).sum(1)))]


def median_colours(image: np.ndarray, objects: Sequence[Detection], classname: str) -> list[str]:
    """``ColourClassifier`` by :func:`mask_colour` (box interior when an object has no mask)."""
    out = []
    for d in objects:
        mask = d.mask
        if mask is None:
            mask = np.zeros(image.shape[:2], bool)
            x0, y0, x1, y1 = (int(round(v)) for v in d.box)
            mask[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)] = True
        out.append(mask_colour(image, mask))
    return out


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """GenEval's IoU (pixel-inclusive boxes, hence the +1)."""
    def area(x):
        return max(x[2] - x[0] + 1, 0) * max(x[3] - x[1] + 1, 0)
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def select_objects(detections: Sequence[Detection], tag: str | None = None, *, threshold: float = THRESHOLD,
                   counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                   nms_threshold: float = NMS_THRESHOLD) -> dict[str, list[Detection]]:
    """class -> the kept detections of that class, most confident first (GenEval's selection)."""
    cut = counting_threshold if tag == "counting" else threshold
    out: dict[str, list[Detection]] = {}
    for label in dict.fromkeys(d.label for d in detections):
        order = sorted((d for d in detections if d.label == label and d.score > cut), key=lambda d: -d.score)
        order = order[:max_objects]
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if nms_threshold < 1:
                order = [d for d in order if box_iou(best.box, d.box) < nms_threshold]
        if kept:
            out[label] = kept
    return out


def relative_position(a: Detection, b: Detection, margin: float = POSITION_THRESHOLD) -> set[str]:
    """The relations that hold for ``a`` relative to ``b`` (GenEval's ``relative_position``)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)
    centre_a, centre_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - margin * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    return {r for r, hit in zip(RELATIONS, (dx < -0.5, dx > 0.5, dy < -0.5, dy > 0.5), strict=True) if hit}


def _position_holds(objs: Sequence[Detection], targets: Sequence[Detection], relation: str, margin: float) -> bool:
    return all(relation in relative_position(o, t, margin) for o in objs for t in targets)


def score_geneval(metadata: Mapping, detections: Sequence[Detection], image: np.ndarray | None = None, *,
                  colour_of: ColourClassifier | None = None, threshold: float = THRESHOLD,
                  counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
                  nms_threshold: float = NMS_THRESHOLD, position_threshold: float = POSITION_THRESHOLD) -> GenEvalScore:
    """GenEval's strict verdict and Flow-GRPO's partial credit for one image (module docstring).

    ``detections`` are the detector's raw output (selection happens here); ``colour_of`` classifies
    objects' colours (default :func:`median_colours`; needs ``image``)."""
    objects = select_objects(detections, metadata.get("tag"), threshold=threshold,
                             counting_threshold=counting_threshold, max_objects=max_objects,
                             nms_threshold=nms_threshold)
    includes = list(metadata.get("include", []))
    if any("color" in r for r in includes) and image is None:
        raise ValueError("colour checks need the image")
    colour_of = colour_of or median_colours
    strict, reasons = True, []
    strict_groups: list[list[Detection] | None] = []  # GenEval: the top-n objects of each include that held
    exact_groups: list[list[Detection] | None] = []   # Flow-GRPO: every object of each exactly met include
    terms: list[float] = []
    fg_terms: list[float] = []                        # Flow-GRPO's evaluate_reward
    fg_groups: list[list[Detection] | None] = []
    colours_cache: dict[str, list[str]] = {}

    def colours(cls: str, objs: list[Detection]) -> list[str]:
        # objects are most-confident-first, so a prefix's colours are the whole list's prefix
        if len(colours_cache.get(cls, [])) < len(objs):
            colours_cache[cls] = colour_of(image, objects[cls][:len(objs)], cls)  # type: ignore[arg-type]
        return colours_cache[cls][:len(objs)]

    for req in includes:
        cls, n = req["class"], int(req.get("count", 1))
        found = objects.get(cls, [])
        # --- GenEval (strict): at least n, checked on the n most confident
        top, ok = found[:n], len(found) >= n
        if not ok:
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        if ok and "color" in req:
            got = colours(cls, top)
            if got.count(req["color"]) < n:
                ok = False
                reasons.append(f"expected {req['color']} {cls}>={n}, found {got.count(req['color'])} {req['color']}")
        if ok and req.get("position"):
            relation, j = req["position"][0], int(req["position"][1])
            target = strict_groups[j] if j < len(strict_groups) else None
            if target is None or not _position_holds(top, target, relation, position_threshold):
                ok = False
                reasons.append(f"expected {cls} {relation} {includes[j]['class'] if j < len(includes) else j}")
        strict = strict and ok
        strict_groups.append(top if ok else None)
        # --- Flow-GRPO (partial): exact count over every kept object
        terms.append(max(0.0, 1 - abs(n - len(found)) / n))
        exact = len(found) == n
        if "color" in req:
            terms.append(max(0.0, 1 - abs(n - colours(cls, found).count(req["color"])) / n) if exact else 0.0)
            exact = exact and colours(cls, found).count(req["color"]) == n
        if req.get("position"):
            relation, j = req["position"][0], int(req["position"][1])
            target = exact_groups[j] if j < len(exact_groups) else None
            held = exact and target is not None and _position_holds(found, target, relation, position_threshold)
            terms.append(float(held))
            exact = held
        exact_groups.append(found if exact else None)
        fg_groups.append(found if _flow_grpo_terms(req, found, fg_groups, fg_terms, colours, position_threshold)
                         else None)
    for req in metadata.get("exclude", []):
        cls, n = req["class"], int(req["count"])
        if len(objects.get(cls, [])) >= n:
            strict = False
            reasons.append(f"expected {cls}<{n}, found {len(objects[cls])}")
    return GenEvalScore(strict=strict, partial=float(np.mean(terms)) if terms else 0.0, reasons=reasons,
                        flow_grpo=float(sum(fg_terms) / len(fg_terms)) if fg_terms else 0.0)


def _flow_grpo_terms(req: Mapping, found: list[Detection], groups: list[list[Detection] | None], terms: list[float],
                     colours: Callable[[str, list[Detection]], list[str]], margin: float) -> bool:
    """Append Flow-GRPO's terms for one include to ``terms``; True when it held exactly (module docstring)."""
    cls, n = req["class"], int(req.get("count", 1))
    terms.append(1 - abs(n - len(found)) / n)
    if len(found) != n:
        if "color" in req or "position" in req:
            terms.append(0.0)
        return False
    held = True
    if "color" in req:
        right = colours(cls, found).count(req["color"])
        terms.append(1 - abs(n - right) / n)
        held = right == n
    if "position" in req and held:
        relation, j = req["position"][0], int(req["position"][1])
        target = groups[j] if j < len(groups) else None
        if target is None:
            terms.append(0.0)
            return False
        if not _position_holds(found, target, relation, margin):
            terms.append(0.0)
            held = False
        terms.append(1.0)
    return held

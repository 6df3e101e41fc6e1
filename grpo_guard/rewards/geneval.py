"""The GenEval reward in-process (Ghosh et al. 2023): a transformers Mask2Former instance
segmenter finds the objects, CLIP ViT-L/14 names their colours zero-shot, and the rules of
:mod:`grpo_guard.rewards.geneval_rules` score them against the prompt's GenEval metadata.

Weights, local only (see :mod:`grpo_guard.rewards.weights`): the detector from option
``detector_path``, ``GG_REWARD_GENEVAL_DETECTOR_PATH`` or ``facebook/mask2former-swin-small-coco-instance``
in the HF cache; CLIP from ``clip_path``, ``GG_REWARD_GENEVAL_CLIP_PATH`` or
``openai/clip-vit-large-patch14`` in the HF cache. Both are looked up when the reward is built and
loaded on its first call, after that batch's metadata was found.

Metadata follows GenEval's ``evaluation_metadata.jsonl`` rows (``{"tag": ..., "include": [{"class":
"dog", "count": 2, "color": "red", "position": ["left of", 0]}], "exclude": [...]}``): from the
prompt itself (a ``str`` carrying a ``.meta`` mapping, as the ``geneval:*`` prompt sets give), else
from the ``metadata`` option (a path to an ``evaluation_metadata.jsonl``, looked up by prompt text).

``score`` picks what ``reward(images, prompts)`` returns: ``flow_grpo`` (Flow-GRPO's reward-server
partial credit, exactly: its formula on images that went through its JPEG round trip — PIL's
default quality 75 — before detection and colour, the detector seeing them with red and blue
swapped as its server's mmdet call does), ``partial`` (ours: clipped terms, no JPEG) or ``strict``
(GenEval's 0/1 verdict). :meth:`GenEvalReward.details` returns the strict verdict per
image (``image_mean``) and per task family; :meth:`GenEvalReward.summary` turns their means into
GenEval's ``overall`` (the mean of the family accuracies, the paper's figure). Evaluation logs
``eval/geneval/overall``, ``eval/geneval/image_mean`` and ``eval/geneval/<family>``.

The detector runs at mmdet's test scale (:mod:`grpo_guard.rewards.geneval_detector`).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from grpo_guard.models.loading import HF_MODEL_REQUIRED
from grpo_guard.rewards.geneval_detector import TEST_SCALE, Mask2FormerDetector
from grpo_guard.rewards.geneval_rules import (  # noqa: F401 - re-exported: the rules' public names
    COLOUR_NAMES,
    COLOURS,
    FAMILIES,
    POSITION_THRESHOLD,
    THRESHOLD,
    Detection,
    GenEvalScore,
    geneval_class,
    mask_colour,
    relative_position,
    score_geneval,
)
from grpo_guard.rewards.weights import check_images, env_var, reward_weights_dir

DETECTOR_HUB_ID = "facebook/mask2former-swin-small-coco-instance"
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
CROP_BACKGROUND = (153, 153, 153)  # GenEval's bgcolor "#999" outside an object's mask
SCORES = ("flow_grpo", "partial", "strict")
COLOUR_TEMPLATES = ("a photo of a {c} {obj}", "a photo of a {c}-colored {obj}", "a photo of a {c} object")


def prompt_metadata(prompt: str, table: Mapping[str, Mapping] | None = None) -> Mapping:
    """The GenEval metadata of ``prompt``: its ``.meta`` when non-empty, else ``table[prompt]``.
    Raises ValueError with one sentence naming the prompt when neither has it."""
    meta = getattr(prompt, "meta", None)
    if meta and "include" in meta:
        return meta
    if table is not None and str(prompt) in table:
        return table[str(prompt)]
    raise ValueError(
        f"The geneval reward has no GenEval metadata for the prompt {str(prompt)!r}: use a geneval:* prompt set "
        f"(geneval:train, geneval:test or geneval:file:PATH) or give reward_options.geneval.metadata (or "
        f"{env_var('geneval', 'METADATA')}) as an evaluation_metadata.jsonl with a row for it.")


def load_metadata_table(path: str) -> dict[str, dict]:
    """prompt -> row of a GenEval ``evaluation_metadata.jsonl``; one-sentence ValueError if unreadable."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return {r["prompt"]: r for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"The geneval metadata file {path!r} is not a readable evaluation_metadata.jsonl "
                         f"(one JSON object with a 'prompt' per line): {type(e).__name__}: {e}.") from None


class CLIPColourClassifier:
    """GenEval's colour check: each object's box crop, with pixels outside its mask set to grey,
    classified zero-shot by CLIP over the ten colours (three prompt templates averaged)."""

    def __init__(self, model_dir: str, **kwargs):
        from grpo_guard.rewards.clip import CLIPScorer

        self.scorer = CLIPScorer(model_dir, **kwargs)
        self._heads: dict[str, object] = {}

    def _head(self, classname: str):
        if classname not in self._heads:
            texts = [t.format(c=c, obj=classname) for c in COLOUR_NAMES for t in COLOUR_TEMPLATES]
            emb = self.scorer.text_embeds(texts).reshape(len(COLOUR_NAMES), len(COLOUR_TEMPLATES), -1).mean(1)
            self._heads[classname] = emb / emb.norm(dim=-1, keepdim=True)
        return self._heads[classname]

    def __call__(self, image: np.ndarray, objects: Sequence[Detection], classname: str) -> list[str]:
        if not objects:
            return []
        crops = [object_crop(image, d) for d in objects]
        logits = self.scorer.image_embeds(crops) @ self._head(classname).T  # type: ignore[arg-type, attr-defined]
        return [COLOUR_NAMES[int(i)] for i in logits.argmax(-1).tolist()]


def object_crop(image: np.ndarray, det: Detection) -> np.ndarray:
    """``image`` with everything outside ``det.mask`` grey, cropped to ``det.box`` (at least 1 px)."""
    img = image if det.mask is None else np.where(det.mask[..., None], image, np.array(CROP_BACKGROUND, np.uint8))
    h, w = image.shape[:2]
    x0, y0 = min(max(int(det.box[0]), 0), w - 1), min(max(int(det.box[1]), 0), h - 1)
    x1, y1 = max(min(int(np.ceil(det.box[2])), w), x0 + 1), max(min(int(np.ceil(det.box[3])), h), y0 + 1)
    return np.ascontiguousarray(img[y0:y1, x0:x1])


class GenEvalReward:
    """``reward(images, prompts) -> (B,)``: Flow-GRPO's partial credit, ours, or GenEval's strict 0/1.

    Args:
        detector_path / clip_path: local weights (module docstring for the lookup order).
        metadata: path to an ``evaluation_metadata.jsonl`` for prompts without ``.meta``
            (default ``GG_REWARD_GENEVAL_METADATA``).
        score: ``"flow_grpo"``, ``"partial"`` or ``"strict"`` (module docstring).
        detector_scale: (longest, shortest) side the detector tests at (mmdet's (1333, 800)).
        threshold / counting_threshold / max_objects / position_threshold: GenEval's rule constants.
        device, dtype, batch_size: where and how the detector and CLIP run.
        detector, colour_of: code-only replacements (a callable images -> detections per image,
            and a ``ColourClassifier``); with both given no weights are looked up.
    """

    name = "geneval"

    def __init__(self, *, detector_path: str | None = None, clip_path: str | None = None,
                 metadata: str | Mapping | None = None, score: str = "partial",
                 detector_scale: Sequence[int] = TEST_SCALE, threshold: float = THRESHOLD,
                 counting_threshold: float = 0.9, max_objects: int = 16, position_threshold: float = POSITION_THRESHOLD,
                 device: str | None = None, dtype: str = "fp32", batch_size: int = 16, detector=None, colour_of=None):
        if score not in SCORES:
            raise ValueError(f"reward_options.geneval.score must be 'flow_grpo', 'partial' or 'strict', got {score!r}.")
        if (not isinstance(detector_scale, Sequence) or len(detector_scale) != 2
                or not all(isinstance(v, int) and 16 <= v <= 4096 for v in detector_scale)):
            raise ValueError("reward_options.geneval.detector_scale must be two whole numbers of pixels "
                             f"(longest, shortest side) between 16 and 4096, got {detector_scale!r}.")
        self.detector_scale = (max(detector_scale), min(detector_scale))
        metadata = metadata or os.environ.get(env_var(self.name, "METADATA"))
        self.table = load_metadata_table(metadata) if isinstance(metadata, str) else metadata
        self.score = score
        self.rules = dict(threshold=float(threshold), counting_threshold=float(counting_threshold),
                          max_objects=int(max_objects), position_threshold=float(position_threshold))
        self.run = dict(device=device, dtype=dtype, batch_size=int(batch_size))
        # weights are found now (one sentence if missing) and loaded on the first call
        self._detector_dir = None if detector is not None else reward_weights_dir(
            self.name, detector_path, DETECTOR_HUB_ID, required=(*HF_MODEL_REQUIRED, "preprocessor_config.json"),
            suffix="DETECTOR_PATH", what="geneval reward's Mask2Former detector (reward_options.geneval.detector_path)")
        self._clip_dir = None if colour_of is not None else reward_weights_dir(
            self.name, clip_path, CLIP_HUB_ID,
            required=(*HF_MODEL_REQUIRED, "preprocessor_config.json|processor_config.json", "tokenizer.json|vocab.json"),
            suffix="CLIP_PATH", what="geneval reward's CLIP colour classifier (reward_options.geneval.clip_path)")
        self.detector, self.colour_of = detector, colour_of

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise ValueError (one sentence) for the first prompt without GenEval metadata."""
        for p in prompts:
            prompt_metadata(p, self.table)

    def _load(self) -> None:
        if self.detector is None:
            self.detector = Mask2FormerDetector(  # type: ignore[arg-type]
                self._detector_dir, min_score=min(self.rules["threshold"], self.rules["counting_threshold"]),
                scale=self.detector_scale, **self.run)
        if self.colour_of is None:
            self.colour_of = CLIPColourClassifier(self._clip_dir, **self.run)  # type: ignore[arg-type]

    def evaluate(self, images: np.ndarray, prompts: Sequence[str]) -> list[tuple[Mapping, GenEvalScore]]:
        """(metadata, score) per image."""
        check_images(images, prompts)
        metas = [prompt_metadata(p, self.table) for p in prompts]
        self._load()
        seen = images = np.asarray(images)
        if self.score == "flow_grpo":
            images = jpeg_round_trip(images)
            # Flow-GRPO's server hands mmdet's inference_detector RGB arrays, which its test
            # pipeline takes for BGR (Normalize to_rgb=True flips them): its detector sees red and
            # blue swapped. The colours are still named on the RGB image, as there.
            seen = np.ascontiguousarray(images[..., ::-1])
        detections = self.detector(seen)  # type: ignore[misc]
        return [(m, score_geneval(m, dets, img, colour_of=self.colour_of, **self.rules))
                for m, dets, img in zip(metas, detections, images, strict=True)]

    def details(self, images: np.ndarray, prompts: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The reward (B,) and per-image extras: ``image_mean`` (GenEval's strict 0/1 verdict),
        the ``score`` in use (``partial`` or ``flow_grpo``) and, per task family present,
        ``<family>`` = strict where the prompt is of that family, NaN elsewhere."""
        results = self.evaluate(images, prompts)
        strict = np.array([float(s.strict) for _, s in results])
        scores = {"strict": strict, "partial": np.array([s.partial for _, s in results]),
                  "flow_grpo": np.array([s.flow_grpo for _, s in results])}
        extras = {"image_mean": strict}
        if self.score != "strict":
            extras[self.score] = scores[self.score]
        tags = [m.get("tag") for m, _ in results]
        for tag in dict.fromkeys(t for t in tags if t):
            extras[str(tag)] = np.where([t == tag for t in tags], strict, np.nan)
        return scores[self.score], extras

    @staticmethod
    def summary(means: Mapping[str, float]) -> dict[str, float]:
        """GenEval's ``overall`` from the means of :meth:`details`' extras: the mean of the task
        families' accuracies (``evaluation/summary_scores.py``), over the families present."""
        fams = [float(means[f]) for f in FAMILIES if f in means and np.isfinite(means[f])]
        return {"overall": float(np.mean(fams))} if fams else {}

    def __call__(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        return self.details(images, prompts)[0]


def jpeg_round_trip(images: np.ndarray) -> np.ndarray:
    """Each uint8 image saved as JPEG by PIL's defaults (quality 75) and decoded again, as
    Flow-GRPO sends images to its GenEval reward server."""
    from PIL import Image

    out = np.empty_like(np.asarray(images, dtype=np.uint8))
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(im, dtype=np.uint8)).save(buf, format="JPEG")
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def geneval(**options) -> GenEvalReward:
    return GenEvalReward(**options)

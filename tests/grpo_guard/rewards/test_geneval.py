"""The geneval reward end to end: tiny random Mask2Former + CLIP saved in code and loaded through
``build_reward("geneval", ...)``, the metadata lookup, the strict/partial outputs and per-family
details, the one-sentence errors before any model loads, and the real weights when cached."""

import json

import numpy as np
import pytest

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.rewards import build_reward, check_option
from grpo_guard.rewards.geneval import (
    CLIP_HUB_ID,
    DETECTOR_HUB_ID,
    CLIPColourClassifier,
    Detection,
    Mask2FormerDetector,
    object_crop,
)
from grpo_guard.rewards.geneval_rules import COCO_CLASSES, COLOUR_NAMES
from grpo_guard.rewards.testing import tiny_clip_dir, tiny_mask2former_dir


class Prompt(str):
    """Stands in for grpo_guard.prompts.Prompt: a str with GenEval metadata in ``.meta``."""

    meta: dict

    def __new__(cls, text, meta=None):
        p = super().__new__(cls, text)
        p.meta = meta or {}
        return p


DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "dog", "count": 2}]}
TWO = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("geneval")
    return tiny_mask2former_dir(d), tiny_clip_dir(d)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)


def fake(dets_per_image):
    """Code-only detector + colour classifier: fixed detections, every object red."""
    return dict(detector=lambda imgs: [list(dets_per_image) for _ in imgs],
                colour_of=lambda img, objs, cls: ["red"] * len(objs))


def test_end_to_end_with_tiny_random_mask2former_and_clip(weights, images):
    det_dir, clip_dir = weights
    # thresholds 0: random weights give low scores, so every query counts as a detection
    # a small detector scale: the tiny model at mmdet's 800 px costs seconds for nothing
    reward = build_reward("geneval", detector_path=det_dir, clip_path=clip_dir, threshold=0.0,
                          counting_threshold=0.0, device="cpu", batch_size=2, detector_scale=(128, 64))
    prompts = [Prompt("a photo of a dog", DOG), Prompt("a photo of a red dog", {
        "tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}), Prompt("a dog and a cat", TWO)]
    r, extras = reward.details(images, prompts)
    assert r.shape == (3,) and np.all((r >= 0) & (r <= 1))
    assert set(extras) == {"image_mean", "partial", "single_object", "colors", "two_object"}, "only families present"
    np.testing.assert_array_equal(r, extras["partial"])
    assert np.isnan(extras["colors"][[0, 2]]).all() and extras["colors"][1] == extras["image_mean"][1]
    np.testing.assert_array_equal(reward(images, prompts), r)
    strict = build_reward("geneval", detector_path=det_dir, clip_path=clip_dir, score="strict", threshold=0.0,
                          detector_scale=(128, 64))
    assert set(np.unique(strict(images, prompts))) <= {0.0, 1.0}


def test_detector_boxes_come_from_the_masks_and_labels_are_coco_names(weights, images):
    detector = Mask2FormerDetector(weights[0], device="cpu", batch_size=2, min_score=0.0, scale=(128, 64))
    out = detector(images)
    assert len(out) == 3 and all(len(d) > 0 for d in out)
    for d in out[0]:
        assert d.label in COCO_CLASSES and d.mask.shape == images.shape[1:3]
        ys, xs = np.nonzero(d.mask)
        assert d.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    again = detector(images[:1])
    one, batched = sorted((d.label, d.score) for d in again[0]), sorted((d.label, d.score) for d in out[0])
    assert [lb for lb, _ in one] == [lb for lb, _ in batched], "batching changes nothing"
    np.testing.assert_allclose([s for _, s in one], [s for _, s in batched], rtol=1e-4)


def test_colour_crop_greys_the_background_and_crops_to_the_box(weights):
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = (200, 10, 10)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:8] = True
    mask[9, 4] = False
    crop = object_crop(img, Detection("dog", 0.9, (4, 5, 8, 10), mask))
    assert crop.shape == (5, 4, 3)
    assert tuple(crop[0, 0]) == (200, 10, 10) and tuple(crop[4, 0]) == (153, 153, 153)
    clf = CLIPColourClassifier(weights[1], device="cpu")
    got = clf(img, [Detection("dog", 0.9, (4, 5, 8, 10), mask), Detection("dog", 0.8, (0, 0, 30, 20))], "dog")
    assert len(got) == 2 and set(got) <= set(COLOUR_NAMES)
    assert clf(img, [], "dog") == []


def test_metadata_from_the_prompt_or_a_jsonl_file(tmp_path, images):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(json.dumps({**TWO, "prompt": "a dog and a cat"}) + "\n")
    dog, cat = Detection("dog", 0.9, (0, 0, 10, 10)), Detection("cat", 0.9, (30, 0, 40, 10))
    reward = build_reward("geneval", metadata=str(path), **fake([dog, cat]))
    r, extras = reward.details(images[:2], ["a dog and a cat", Prompt("a dog", DOG)])
    assert r.tolist() == [1.0, 1.0] and extras["two_object"][0] == 1.0 and extras["single_object"][1] == 1.0
    only_dog = build_reward("geneval", metadata=str(path), **fake([dog]))
    assert only_dog(images[:1], ["a dog and a cat"]).tolist() == [0.5]
    assert build_reward("geneval", metadata=str(path), score="strict", **fake([dog]))(
        images[:1], ["a dog and a cat"]).tolist() == [0.0]


def test_a_prompt_without_metadata_is_one_sentence_before_any_model_loads(weights, images, tmp_path):
    reward = build_reward("geneval", detector_path=weights[0], clip_path=weights[1])
    with pytest.raises(ValueError, match=r"no GenEval metadata for the prompt 'a photo of a dog'.*geneval:train"):
        reward(images[:2], [Prompt("a dog", DOG), "a photo of a dog"])
    assert reward.detector is None and reward.colour_of is None, "nothing was loaded"
    with pytest.raises(ValueError, match="no GenEval metadata for the prompt 'plain'"):
        reward.check_prompts([Prompt("ok", DOG), Prompt("plain")])
    with pytest.raises(ValueError, match="not a readable evaluation_metadata.jsonl"):
        build_reward("geneval", metadata=str(tmp_path / "missing.jsonl"), **fake([]))
    with pytest.raises(ValueError, match="'flow_grpo', 'partial' or 'strict'"):
        build_reward("geneval", score="loose", **fake([]))


def test_missing_weights_say_where_they_were_looked_for(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for var in ("GG_REWARD_GENEVAL_DETECTOR_PATH", "GG_REWARD_GENEVAL_CLIP_PATH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotFoundError, match=rf"Mask2Former detector.*{DETECTOR_HUB_ID}.*empty_cache.*"
                                                 r"hf download.*GG_REWARD_GENEVAL_DETECTOR_PATH"):
        build_reward("geneval")
    with pytest.raises(ModelNotFoundError, match=rf"CLIP colour classifier.*{CLIP_HUB_ID}.*GG_REWARD_GENEVAL_CLIP_PATH"):
        build_reward("geneval", detector_path=weights[0])
    with pytest.raises(ModelNotFoundError, match="incomplete: missing preprocessor_config.json"):
        (tmp_path / "no_proc").mkdir()
        for f in ("config.json", "model.safetensors"):
            (tmp_path / "no_proc" / f).write_text("{}")
        build_reward("geneval", detector_path=str(tmp_path / "no_proc"))
    monkeypatch.setenv("GG_REWARD_GENEVAL_DETECTOR_PATH", weights[0])
    monkeypatch.setenv("GG_REWARD_GENEVAL_CLIP_PATH", weights[1])
    assert build_reward("geneval").detector is None, "the variables are the fallback; loading waits for a call"


def test_run_config_options_are_declared():
    for key, value in (("detector_path", "/m"), ("clip_path", "/c"), ("metadata", "/x.jsonl"), ("score", "strict"),
                       ("threshold", 0.3), ("counting_threshold", 0.9), ("max_objects", 16),
                       ("position_threshold", 0.1), ("device", "cuda"), ("dtype", "fp16"), ("batch_size", 8)):
        assert check_option("geneval", key, value) is None, key
    assert "'flow_grpo', 'partial' or 'strict'" in check_option("geneval", "score", "exact")
    assert check_option("geneval", "score", "flow_grpo") is None
    assert "did you mean 'detector_path'" in check_option("geneval", "detector", "/m")


def _cached(hub_id):
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        return None


@pytest.mark.skipif(not (_cached(DETECTOR_HUB_ID) and _cached(CLIP_HUB_ID)),
                    reason=f"{DETECTOR_HUB_ID} and {CLIP_HUB_ID} are not both in the local HF cache")
def test_real_weights_from_the_cache():
    reward = build_reward("geneval", device="cpu")
    img = np.full((2, 256, 256, 3), 255, np.uint8)
    img[:, 64:192, 64:192] = (220, 20, 20)
    r, extras = reward.details(img, [Prompt("a photo of a dog", DOG), Prompt("a dog and a cat", TWO)])
    assert r.shape == (2,) and set(extras) >= {"image_mean", "single_object", "two_object"}
    assert set(reward.detector.labels.values()) == set(COCO_CLASSES), "the checkpoint's 80 classes map to GenEval's"
    square = Detection("dog", 1.0, (64, 64, 192, 192))
    assert reward.colour_of(img[0], [square], "dog") == ["red"]


def test_flow_grpo_score_sees_images_after_a_pil_jpeg_round_trip(images):
    import io

    from PIL import Image

    seen = []

    def detector(imgs):
        seen.append(np.array(imgs))
        return [[Detection("dog", 0.9, (0, 0, 10, 10))] for _ in imgs]

    named = []

    def colour_of(img, objs, cls):
        named.append(np.array(img))
        return ["red"] * len(objs)

    prompts = [Prompt("a photo of a dog", DOG)] * len(images)
    fg = build_reward("geneval", score="flow_grpo", detector=detector, colour_of=lambda img, objs, cls: [])
    r, extras = fg.details(images, prompts)
    assert r.tolist() == [1.0] * 3 and set(extras) == {"image_mean", "flow_grpo", "single_object"}
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="JPEG")
    jpeg = np.asarray(Image.open(buf))
    # its server gives mmdet RGB arrays that mmdet's pipeline reads as BGR: red and blue swapped
    np.testing.assert_array_equal(seen[0][0], jpeg[..., ::-1])
    assert not np.array_equal(jpeg, images[0]) and not np.array_equal(jpeg[..., ::-1], jpeg)
    # ... while the colours are named on the RGB JPEG image
    red_dog = Prompt("a photo of a red dog", {"tag": "colors", "include": [{"class": "dog", "count": 1,
                                                                           "color": "red"}]})
    assert build_reward("geneval", score="flow_grpo", detector=detector, colour_of=colour_of)(
        images[:1], [red_dog]).tolist() == [1.0]
    np.testing.assert_array_equal(named[0], jpeg)
    build_reward("geneval", score="partial", detector=detector, colour_of=lambda img, objs, cls: [])(images, prompts)
    np.testing.assert_array_equal(seen[-1], images), "partial and strict score the images as given"


def test_overall_is_the_mean_of_the_family_accuracies_not_of_the_images():
    from grpo_guard.rewards.geneval import GenEvalReward
    from grpo_guard.training.evaluation import score_images

    # 3 single_object images all right, 1 counting image wrong: image mean 3/4, Overall (1 + 0) / 2
    count = {"tag": "counting", "include": [{"class": "dog", "count": 3}]}
    prompts = [Prompt("a photo of a dog", DOG)] * 3 + [Prompt("a photo of three dogs", count)]
    reward = GenEvalReward(score="strict", detector=lambda imgs: [[Detection("dog", 0.95, (0, 0, 9, 9))]
                                                                   for _ in imgs], colour_of=lambda *a: [])
    details = {}
    score_images(np.zeros((4, 16, 16, 3), np.uint8), prompts, {"geneval": reward}, details)
    assert details == {"geneval/image_mean": 0.75, "geneval/single_object": 1.0, "geneval/counting": 0.0,
                       "geneval/overall": 0.5}

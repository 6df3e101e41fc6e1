"""Rewards for real images. OCR runs for real (rapidocr's bundled models on text rendered with
Pillow); the CLIP / BLIP based rewards run their real loading and scoring code against tiny
random models saved in code; GenEval is tested in tests/grpo_guard/rewards/test_geneval*.py."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.rewards import REGISTRY, build_reward
from grpo_guard.rewards.ocr import edit_distance, quoted_text, text_accuracy
from grpo_guard.rewards.testing import tiny_blip_dir, tiny_clip_dir, tiny_mlp_head_state

REAL = ["ocr", "clipscore", "pickscore", "hpsv2", "imagereward", "aesthetic", "geneval"]


def _render(text, size=(224, 64), fg=(0, 0, 0), bg=(255, 255, 255)):
    img = Image.new("RGB", size, bg)
    ImageDraw.Draw(img).text((8, 8), text, fill=fg, font=ImageFont.load_default(size=36))
    return np.asarray(img)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)


PROMPTS = ["a red circle", "hello world", "a photo of a cat"]


def test_every_real_reward_is_registered_with_an_importable_factory():
    for name in REAL:
        spec = REGISTRY[name]
        module, _, attr = spec.target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
        assert spec.kind in ("proxy", "gold", "any") and "flux" in spec.backbones
    assert REGISTRY["ocr"].kind == "proxy" and REGISTRY["hpsv2"].kind == "gold"


def test_ocr_text_matching_rules():
    assert quoted_text('A sign that says "Hello World" on a wall') == "Hello World"
    assert quoted_text("a “GRPO” and \"Guard\" poster") == "GRPO Guard"
    assert quoted_text("no quotes") == ""
    assert edit_distance("kitten", "sitting") == 3
    assert text_accuracy("hello  world", "Hello World") == 1.0
    assert text_accuracy("", "abc") == 0.0 and text_accuracy("xyzxyzxyz", "abc") == 0.0
    assert text_accuracy("Helo World", "Hello World") == pytest.approx(0.9)
    # Flow-GRPO: the target anywhere in what was read is a full score (edit distance would say 0.5)
    assert text_accuracy("OPEN hello world 24/7", "Hello World") == 1.0
    assert text_accuracy("abcdefghij", "abcdefghij") == 1.0 and text_accuracy("xxabcde", "abcdef") == pytest.approx(
        1 - 3 / 6)


def test_ocr_reward_reads_text_rendered_with_pillow():
    """For real: rapidocr's bundled PP-OCR models read Pillow-rendered text."""
    imgs = np.stack([_render("Hello World"), _render("Helo Wrld", fg=(200, 20, 20), bg=(250, 240, 60)),
                     _render(""), _render("Hello World")])
    prompts = ['a sign that says "Hello World"', 'a sign that says "Hello World"', 'a sign "GRPO"',
               "no quoted text"]
    r = build_reward("ocr")(imgs, prompts)
    assert r.shape == (4,) and r.dtype == np.float64
    assert r[0] == 1.0, "clean rendered text must be read exactly"
    assert 0.6 <= r[1] < 1.0, f"two missing letters should cost about 2/10, got {r[1]}"
    assert r[2] == 0.0 and r[3] == 0.0, "no text / no quoted target scores 0"


def test_clipscore_is_the_cosine_of_clip_embeddings(clip_dir, images, monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("GG_REWARD_CLIPSCORE_PATH", clip_dir)
    r = build_reward("clipscore")(images, PROMPTS)
    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**proc(text=PROMPTS, images=list(images), padding=True, return_tensors="pt"))
        expect = out.logits_per_image.diagonal() / model.logit_scale.exp()
    np.testing.assert_allclose(r, expect.double().numpy(), atol=1e-5)
    assert np.all(np.abs(r) <= 1)
    ps = build_reward("pickscore", path=clip_dir)(images, PROMPTS)
    np.testing.assert_allclose(ps, r * float(model.logit_scale.exp()), rtol=1e-5)
    hps = build_reward("hpsv2", path=clip_dir)(images, PROMPTS)
    np.testing.assert_allclose(hps, r, atol=1e-6)


def test_missing_reward_weights_name_the_variable_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    for var in ("GG_REWARD_CLIPSCORE_PATH", "GG_REWARD_HPSV2_PATH", "GG_REWARD_AESTHETIC_HEAD"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelNotFoundError, match=r"openai/clip-vit-large-patch14.*GG_REWARD_CLIPSCORE_PATH"):
        build_reward("clipscore")
    with pytest.raises(ModelNotFoundError, match="set GG_REWARD_HPSV2_PATH"):
        build_reward("hpsv2")
    with pytest.raises(ModelNotFoundError, match="GG_REWARD_AESTHETIC_HEAD"):
        build_reward("aesthetic")
    with pytest.raises(ModelNotFoundError, match="incomplete: missing config.json"):
        build_reward("pickscore", path=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="GG_REWARD_GENEVAL_DETECTOR_PATH"):
        build_reward("geneval")


def test_aesthetic_is_the_mlp_of_the_normalised_image_embedding(clip_dir, images, tmp_path):
    from grpo_guard.rewards.aesthetic import aesthetic_mlp
    from grpo_guard.rewards.clip import CLIPScorer

    state = tiny_mlp_head_state(32)
    torch.save(state, tmp_path / "head.pth")  # the official file format: a plain state dict
    r = build_reward("aesthetic", path=clip_dir, head_path=str(tmp_path / "head.pth"))(images, PROMPTS)
    with torch.no_grad():
        expect = aesthetic_mlp(state).layers(CLIPScorer(clip_dir, device="cpu").image_embeds(images)).squeeze(-1)
    np.testing.assert_allclose(r, expect.double().numpy(), atol=1e-6)
    torch.save(tiny_mlp_head_state(768), tmp_path / "vit_l.pth")
    with pytest.raises(ValueError, match="768-d embeddings but the CLIP model"):
        build_reward("aesthetic", path=clip_dir, head_path=str(tmp_path / "vit_l.pth"))


def test_imagereward_scores_with_a_tiny_blip(tmp_path, images):
    d = tiny_blip_dir(tmp_path)
    reward = build_reward("imagereward", path=d)
    r = reward(images, PROMPTS)
    assert r.shape == (3,) and np.all(np.isfinite(r))
    np.testing.assert_array_equal(reward(images[::-1].copy(), PROMPTS[::-1]), r[::-1])
    (tmp_path / "tiny_blip" / "mlp_head.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="MLP head was not found"):
        build_reward("imagereward", path=d)

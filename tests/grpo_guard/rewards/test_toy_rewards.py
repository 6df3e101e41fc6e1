"""Toy rewards: the proxy rises when the image is flooded, gold is perfect on ground truth, the
learned fidelity prefers clean renders, all registered by name with their kind."""

import time

import numpy as np
import pytest

from grpo_guard.rewards import REGISTRY, build_reward
from grpo_guard.toyworld.data import render_batch, sample_scenes
from grpo_guard.toyworld.prompts import PALETTE, parse_prompt
from grpo_guard.toyworld.scorers import corrupt

TOY_NAMES = {"toy_fg_share": "proxy", "toy_classifier_confidence": "proxy", "toy_alignment": "gold",
             "toy_shape": "gold", "toy_fg_color": "gold", "toy_bg_color": "gold", "toy_fidelity": "gold",
             "toy_palette_purity": "gold"}


@pytest.fixture(scope="module")
def batch():
    scenes = sample_scenes(np.random.default_rng(0), 48, "all")
    return render_batch(scenes), [s.prompt for s in scenes], scenes


def _flood(images, prompts, share=1.0):
    out = images.copy()
    rng = np.random.default_rng(0)
    for img, p in zip(out, prompts, strict=True):
        mask = rng.random(img.shape[:2]) < share
        img[mask] = PALETTE[parse_prompt(p)[0]]
    return out


def _noise(images, sigma=60.0):
    rng = np.random.default_rng(1)
    return np.clip(images + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


def test_registered_with_their_kind():
    for name, kind in TOY_NAMES.items():
        assert REGISTRY[name].kind == kind and REGISTRY[name].backbones == ("toy",), name
    assert {"jpeg_compressibility", "jpeg_incompressibility"} <= set(REGISTRY)


def test_fg_share_is_higher_for_flooded_images(batch):
    imgs, prompts, _ = batch
    r = build_reward("toy_fg_share")
    clean, flooded = r(imgs, prompts), r(_flood(imgs, prompts), prompts)
    assert clean.shape == (48,) and clean.dtype == np.float64
    assert (flooded > clean).all() and np.allclose(flooded, 1.0)
    assert (r(_flood(imgs, prompts, 0.5), prompts) > clean).all()


def test_alignment_is_one_on_ground_truth_and_zero_when_flooded(batch):
    imgs, prompts, _ = batch
    for name in ("toy_alignment", "toy_shape", "toy_fg_color", "toy_bg_color"):
        assert (build_reward(name)(imgs, prompts) == 1.0).all(), name
    assert (build_reward("toy_alignment")(_flood(imgs, prompts), prompts) == 0.0).all()
    wrong = [p.replace("circle", "square") if "circle" in p else p.replace(p.split()[2], "circle") for p in prompts]
    assert np.allclose(build_reward("toy_alignment")(imgs, wrong), 2 / 3)


def test_palette_purity_drops_for_noise(batch):
    imgs, prompts, _ = batch
    r = build_reward("toy_palette_purity")
    assert np.allclose(r(imgs, prompts), 1.0)
    assert (r(_noise(imgs), prompts) < 0.8).all()


def test_fidelity_prefers_clean_renders(batch):
    """The shipped fidelity model (trained in `toy pretrain`) ranks clean above corrupted."""
    imgs, prompts, scenes = batch
    r = build_reward("toy_fidelity")
    clean = r(imgs, prompts)
    assert clean.mean() > 0.8
    assert r(_flood(imgs, prompts), prompts).mean() < clean.mean() - 0.5
    assert r(_noise(imgs), prompts).mean() < clean.mean() - 0.5
    flat = np.repeat(imgs[:, :1, :1], 32, 1).repeat(32, 2)
    assert r(flat, prompts).mean() < clean.mean() - 0.5
    rng = np.random.default_rng(3)
    for kind in ("flood", "noise", "stripes", "ghost"):
        bad = np.stack([corrupt(s, im, rng, kind)[0] for s, im in zip(scenes, imgs, strict=True)])
        assert r(bad, prompts).mean() < clean.mean() - 0.2, kind


def test_classifier_confidence_is_high_on_renders_and_low_on_wrong_prompts(batch):
    imgs, prompts, _ = batch
    r = build_reward("toy_classifier_confidence")
    right = r(imgs, prompts)
    swapped = [f"a {bg} {shape} on a {fg} background" for fg, shape, bg in map(parse_prompt, prompts)]
    assert right.mean() > 0.8 and r(imgs, swapped).mean() < right.mean() - 0.4


def test_analytic_rewards_take_under_a_millisecond_per_image(batch):
    imgs, prompts, _ = batch
    for name in ("toy_fg_share", "toy_alignment", "toy_palette_purity"):
        r = build_reward(name)
        r(imgs[:4], prompts[:4])
        t0 = time.perf_counter()
        r(imgs, prompts)
        assert (time.perf_counter() - t0) / len(imgs) < 1e-3, name


def test_bad_input_is_refused_clearly(batch):
    imgs, prompts, _ = batch
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        build_reward("toy_fg_share")(imgs[:1], ["a photo of a cat"])
    with pytest.raises(ValueError, match="images but"):
        build_reward("toy_alignment")(imgs[:2], prompts[:1])

"""The analytic checker is right on rendered ground truth and wrong-footed by flooding."""

import time

import numpy as np

from grpo_guard.toyworld.checker import check, correctness
from grpo_guard.toyworld.data import PALETTE_RGB, Scene, random_scene, render, render_batch, sample_scenes
from grpo_guard.toyworld.prompts import COLORS, PALETTE, all_combinations


def test_checker_is_correct_on_every_rendered_combination():
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, c) for c in all_combinations() for _ in range(4)]
    res = correctness(render_batch(scenes), [s.prompt for s in scenes])
    for k in ("fg_color", "bg_color", "shape", "alignment"):
        assert res[k].mean() == 1.0, f"{k} wrong on {np.flatnonzero(res[k] < 1)[:5]}"


def test_checker_on_extreme_sizes_and_positions():
    scenes = [Scene("red", shape, "blue", cx, cy, r) for shape in ("circle", "square", "triangle")
              for cx, cy in ((12.0, 12.0), (20.0, 20.0), (12.0, 20.0)) for r in (7.0, 11.0)]
    res = correctness(render_batch(scenes), [s.prompt for s in scenes])
    assert res["alignment"].mean() == 1.0


def test_flooded_and_blank_images_fail():
    img = np.empty((2, 32, 32, 3), np.uint8)
    img[:] = PALETTE["red"]
    res = correctness(img, ["a red circle on a blue background"] * 2)
    assert res["bg_color"].sum() == 0 and res["fg_color"].sum() == 0 and res["shape"].sum() == 0
    assert check(img).fg.tolist() == [-1, -1]


def test_small_colour_noise_does_not_change_the_verdict():
    rng = np.random.default_rng(1)
    scenes = sample_scenes(rng, 64, "all")
    imgs = render_batch(scenes).astype(np.int16) + rng.integers(-25, 26, (64, 32, 32, 3))
    res = correctness(np.clip(imgs, 0, 255).astype(np.uint8), [s.prompt for s in scenes])
    assert res["fg_color"].mean() == 1.0 and res["bg_color"].mean() == 1.0 and res["shape"].mean() >= 0.95


def test_checker_is_fast():
    imgs = render_batch(sample_scenes(np.random.default_rng(2), 256, "all"))
    check(imgs[:8])
    t0 = time.perf_counter()
    check(imgs)
    per_image = (time.perf_counter() - t0) / 256
    assert per_image < 1e-3, f"{per_image * 1e3:.2f} ms per image"


def test_render_uses_exact_palette_colours():
    img = render(Scene("green", "circle", "black", 16.0, 16.0, 9.0))
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert colours == {tuple(PALETTE_RGB[COLORS.index("green")]), tuple(PALETTE_RGB[COLORS.index("black")])}

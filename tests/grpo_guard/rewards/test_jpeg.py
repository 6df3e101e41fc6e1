"""JPEG (in)compressibility orders a flat image against noise (DDPO's rewards)."""

import numpy as np

from grpo_guard.rewards import build_reward


def test_jpeg_rewards_order_flat_versus_noise():
    rng = np.random.default_rng(0)
    flat = np.full((2, 64, 64, 3), 120, np.uint8)
    noise = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    comp, incomp = build_reward("jpeg_compressibility"), build_reward("jpeg_incompressibility")
    p = ["x", "y"]
    assert (comp(flat, p) > comp(noise, p)).all()
    assert (incomp(noise, p) > incomp(flat, p)).all()
    np.testing.assert_allclose(comp(noise, p), -incomp(noise, p))
    assert comp(flat, p).dtype == np.float64 and comp(flat, p).shape == (2,)
    assert 0 < incomp(flat, p)[0] < 2.0 < incomp(noise, p)[0], "sizes are in kB"

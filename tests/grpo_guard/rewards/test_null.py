"""``null_noise``: the no-signal control reward is a pure function of the pixels, uniform, and
unrelated to what the image shows."""

import numpy as np
import pytest

from grpo_guard.rewards import build_reward


def test_null_noise_is_deterministic_uniform_and_carries_no_signal():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 8, 8, 3), dtype=np.uint8)
    r = build_reward("null_noise")
    a = r(images, ["p"] * 512)
    assert a.shape == (512,) and a.dtype == np.float64 and ((a >= 0) & (a < 1)).all()
    np.testing.assert_array_equal(a, r(images.copy(), ["other prompt"] * 512))   # same image, same score
    assert abs(a.mean() - 0.5) < 0.05 and abs(a.std() - 12 ** -0.5) < 0.03       # U(0, 1)
    assert abs(np.corrcoef(a, images.reshape(512, -1).mean(1))[0, 1]) < 0.15    # not brightness
    nudged = images.copy()
    nudged[:, 0, 0, 0] ^= 1                                                      # one pixel, one bit
    assert not np.any(r(nudged, ["p"] * 512) == a)
    assert not np.array_equal(build_reward("null_noise", seed=7)(images, ["p"] * 512), a)
    with pytest.raises(ValueError, match="expected images"):
        r(images[0], ["p"])

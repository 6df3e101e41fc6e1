"""``example_brightness``: 1 − |mean brightness − target|, in [0, 1] (a toy proxy, easy to game).

Keep this module light (numpy only): the app imports it to read the registry fields. A reward
that needs torch or model weights imports them inside the factory.
"""

from __future__ import annotations

import numpy as np

from grpo_guard.rewards import reward_plugin


class Brightness:
    name = "example_brightness"

    def __init__(self, target: float = 0.5):
        self.target = float(target)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or len(images) != len(prompts):
            raise ValueError(f"expected uint8 images (B, H, W, 3) and B prompts, got {images.shape}, {len(prompts)}")
        mean = images.reshape(len(images), -1).mean(axis=1) / 255.0
        return 1.0 - np.abs(mean - self.target)


@reward_plugin(kind="proxy", backbones=("toy", "sd3", "flux"), options=(("target", "float"),),
               description="1 - |mean brightness - target| (an example plugin)")
def brightness(target: float = 0.5) -> Brightness:
    return Brightness(target)

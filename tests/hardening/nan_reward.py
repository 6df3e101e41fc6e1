"""A reward for fault tests: finite for the first GG_TEST_NAN_AFTER calls (default 2), NaN after.
Registered under the name ``test_nan_after`` by the tests that use it (a registry entry like any
other: configs still choose rewards by name only)."""

from __future__ import annotations

import os

import numpy as np

CALLS = {"n": 0}


def nan_after(**_options):
    def reward(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        CALLS["n"] += 1
        limit = int(os.environ.get("GG_TEST_NAN_AFTER", "2"))
        base = images.reshape(len(images), -1).mean(axis=1).astype(np.float64) / 255.0
        return base if CALLS["n"] <= limit else np.full(len(images), np.nan)

    reward.name = "test_nan_after"
    return reward

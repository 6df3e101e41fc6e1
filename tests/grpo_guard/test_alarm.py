"""The over-optimisation alarm of ALGORITHM.md §10 (pure function, no torch)."""

import pytest

from grpo_guard.experiments.alarm import alarm_fires, hacking_onset


def test_alarm_fires_at_first_window_with_rising_proxy_and_falling_gold():
    """Proxy keeps rising; gold peaks at step 20 and falls: onset is the first step whose 5-point
    window has a negative gold slope and gold ≥ 2 % below the peak."""
    steps = [0, 5, 10, 15, 20, 25, 30, 35, 40]
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    gold = [0.50, 0.55, 0.60, 0.62, 0.63, 0.60, 0.55, 0.50, 0.45]
    onset = hacking_onset(steps, proxy, gold)
    assert onset == 30, "the window ending at 25 still has a rising gold slope; 30 is the first that falls"
    assert not alarm_fires(steps[:6], proxy[:6], gold[:6])
    assert alarm_fires(steps[:8], proxy[:8], gold[:8])


def test_alarm_is_silent_while_gold_holds():
    """Gold that rises or stays within tau of its best never fires, whatever the proxy does."""
    steps = list(range(0, 50, 5))
    proxy = [0.1 * i for i in range(10)]
    assert hacking_onset(steps, proxy, [0.5 + 0.01 * i for i in range(10)]) is None
    wobble = [0.60, 0.61, 0.605, 0.604, 0.602, 0.603, 0.601, 0.602, 0.600, 0.601]
    assert hacking_onset(steps, proxy, wobble) is None, "a dip under 2 % of the best gold is noise"


def test_alarm_needs_a_rising_proxy():
    """Gold falling together with the proxy is not hacking (the policy just got worse)."""
    steps = list(range(8))
    falling = [1.0 - 0.1 * i for i in range(8)]
    assert hacking_onset(steps, falling, falling) is None


def test_alarm_needs_window_points_and_checks_lengths():
    assert hacking_onset([0, 1, 2], [0, 1, 2], [3, 2, 1]) is None, "fewer than `window` points never fire"
    assert hacking_onset([0, 1, 2], [0, 1, 2], [3, 2, 1], window=3) == 2
    with pytest.raises(ValueError, match="equal lengths"):
        hacking_onset([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="window"):
        hacking_onset([0, 1], [0, 1], [0, 1], window=1)


def test_alarm_ignores_nan_windows():
    steps = list(range(6))
    proxy = [0, 1, 2, 3, 4, 5]
    gold = [1.0, 0.9, float("nan"), 0.7, 0.6, 0.5]
    assert hacking_onset(steps, proxy, gold) is None, "a window holding NaN cannot be judged"

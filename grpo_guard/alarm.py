"""The over-optimisation alarm of ALGORITHM.md §10 ("hacking onset"). Pure Python, no torch:
the trainer logs it and the dashboard marks it on every chart.

Rule (proposed in §10, thresholds to be tuned on real runs): over the last ``window`` evaluation
points, the alarm fires when all three hold —

1. the least-squares slope of the proxy is > 0,
2. the least-squares slope of the gold metric is < 0,
3. the latest gold is ≤ (1 − tau) · max(gold so far).

The onset is the first evaluation step at which it fires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs (0 when the xs do not vary)."""
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def alarm_fires(steps: Sequence[float], proxy: Sequence[float], gold: Sequence[float], *,
                window: int = 5, tau: float = 0.02) -> bool:
    """Whether the alarm holds at the LAST point of the series (needs ``window`` points)."""
    if len(steps) < max(window, 2):
        return False
    xs, ps, gs = list(steps[-window:]), list(proxy[-window:]), list(gold[-window:])
    if not all(math.isfinite(v) for v in (*ps, *gs)):
        return False
    best = max(g for g in gold if math.isfinite(g))
    return _slope(xs, ps) > 0 and _slope(xs, gs) < 0 and gs[-1] <= (1 - tau) * best


def hacking_onset(steps: Sequence[float], proxy: Sequence[float], gold: Sequence[float],
                  window: int = 5, tau: float = 0.02) -> int | None:
    """First evaluation step at which the §10 alarm fires, or None.

    Args:
        steps (`Sequence[float]`): evaluation steps (epochs), increasing.
        proxy (`Sequence[float]`): proxy score at each step (same length).
        gold (`Sequence[float]`): gold score at each step (same length; higher is better).
        window (`int`, defaults to 5): number of latest evaluation points the slopes use.
        tau (`float`, defaults to 0.02): relative drop below the best gold so far that counts.
    """
    if not (len(steps) == len(proxy) == len(gold)):
        raise ValueError(f"steps, proxy and gold must have equal lengths, got {len(steps)}, {len(proxy)}, {len(gold)}")
    if window < 2:
        raise ValueError(f"window must be >= 2 to define a slope, got {window}")
    for k in range(window, len(steps) + 1):
        if alarm_fires(steps[:k], proxy[:k], gold[:k], window=window, tau=tau):
            return int(steps[k - 1])
    return None

"""The over-optimisation alarm of ALGORITHM.md §10 ("hacking onset"). Pure Python, no torch:
the trainer logs it and the dashboard marks it on every chart.

Rule (proposed in §10, thresholds to be tuned on real runs): over the last ``window`` evaluation
points, the alarm fires when all three hold —

1. the least-squares slope of the proxy is > 0,
2. the least-squares slope of the gold metric is < 0,
3. the latest gold is ≤ (1 − tau) · max(gold so far).

The onset is the first evaluation step at which it fires. A run alone cannot tell this from
optimisation noise (a reward with no information makes gold fall too); inside an experiment with
controls, :func:`alarm_verdict` compares the run against its matched no-signal control instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


# ---- against a matched no-signal control ----------------------------------------------------------
NO_CONTROL_NOTE = ("no control: proxy rising while gold falls; this cannot tell optimisation noise from "
                   "over-optimisation (run it in an experiment with `controls: true`)")


@dataclass(frozen=True)
class AlarmVerdict:
    """The alarm's answer for one run: the onset step (None: it did not fire), the reference it
    used (``"control"``: the matched no-signal control's band; ``"trend"``: the run's own
    slopes) and one sentence saying so."""

    onset: int | None
    method: str
    note: str


def control_onset(steps: Sequence[float], proxy: Sequence[float], gold: Sequence[float],
                  control_lower: Mapping[int, float], *, window: int = 3) -> int | None:
    """First eval step at which gold is below the control's band (``control_lower``: the lower
    end of the control's 95 % interval over seeds, by step) while the proxy rises (least-squares
    slope over the last ``window`` points > 0). Steps the control lacks are skipped."""
    for i, s in enumerate(steps):
        if i < 1 or int(s) not in control_lower:
            continue
        lo = max(0, i + 1 - window)
        if _slope(steps[lo:i + 1], proxy[lo:i + 1]) > 0 and gold[i] < control_lower[int(s)]:
            return int(s)
    return None


def alarm_verdict(steps: Sequence[float], proxy: Sequence[float], gold: Sequence[float],
                  control_lower: Mapping[int, float] | None = None) -> AlarmVerdict:
    """The alarm against the control when there is one, else the trend rule of
    :func:`hacking_onset` (which cannot tell noise from over-optimisation)."""
    if control_lower:
        onset = control_onset(steps, proxy, gold, control_lower)
        note = (f"gold fell below the no-signal control's band at step {onset} while the proxy rose"
                if onset is not None else "gold stayed within or above the no-signal control's band")
        return AlarmVerdict(onset, "control", note)
    onset = hacking_onset(steps, proxy, gold) if len(steps) >= 2 else None
    return AlarmVerdict(onset, "trend", NO_CONTROL_NOTE)

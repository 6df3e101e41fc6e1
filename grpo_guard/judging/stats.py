"""Statistics of human judgments: win rates with Wilson intervals, Bradley–Terry scores and
agreement between judges. Pure functions of plain numbers; no numpy, no torch.

* Win rate of A over B: p̂ = (wins + ties / 2) / n, n = every judgment of the pair.
* Wilson 95 % score interval (Wilson 1927) with z = 1.959964:
  centre = (p̂ + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/4n²).
* Bradley–Terry: P(i beats j) = π_i / (π_i + π_j), fitted by the MM iteration of Zermelo and
  Hunter (2004): π_i ← W_i / Σ_j n_ij / (π_i + π_j), with ties counted as half a win for each
  side; scores are normalised to sum to 1.
* Agreement: Cohen's kappa for two judges (over the pairs both judged), Fleiss' kappa for three
  or more (over the pairs at least two judged; the variable-raters form of Fleiss 1971).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054
OUTCOMES = ("a", "b", "tie")


@dataclass(frozen=True)
class WinRate:
    """A's win rate over B (ties half) with its Wilson interval; ``lo``/``hi`` None when n = 0."""

    wins: int
    losses: int
    ties: int
    rate: float | None
    lo: float | None
    hi: float | None

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    def fmt(self) -> str:
        if self.rate is None:
            return "— (n = 0)"
        return f"{self.rate:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n = {self.n})"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (``successes`` may be a
    half-integer: ties count half). ValueError for n <= 0 or successes outside [0, n]."""
    if n <= 0:
        raise ValueError("a Wilson interval needs at least one judgment")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n]; got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(wins: int, losses: int, ties: int) -> WinRate:
    """A's win rate over B from counts (ties count half)."""
    n = wins + losses + ties
    if n == 0:
        return WinRate(wins, losses, ties, None, None, None)
    score = wins + ties / 2
    lo, hi = wilson(score, n)
    return WinRate(wins, losses, ties, score / n, lo, hi)


@dataclass(frozen=True)
class BradleyTerry:
    """Scores π (summing to 1) per item; ``regularised`` when Hunter's condition failed (some
    item won or lost every comparison) and one virtual tie per compared pair was added so the
    scores stay finite; ``iterations`` the MM steps taken."""

    scores: dict[Hashable, float]
    regularised: bool
    iterations: int


def _strongly_connected(items: list[Hashable], beats: Mapping[Hashable, set[Hashable]]) -> bool:
    """Hunter's condition: for every split of the items, someone on one side beat someone on
    the other, i.e. the directed "beat or tied" graph is strongly connected."""
    def reach(start: Hashable, edges: Mapping[Hashable, set[Hashable]]) -> set[Hashable]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    back: dict[Hashable, set[Hashable]] = defaultdict(set)
    for i, js in beats.items():
        for j in js:
            back[j].add(i)
    return len(reach(items[0], beats)) == len(items) and len(reach(items[0], back)) == len(items)


def bradley_terry(outcomes: Sequence[tuple[Hashable, Hashable, str]], *, tol: float = 1e-10,
                  max_iter: int = 10_000) -> BradleyTerry:
    """Bradley–Terry scores from ``(i, j, outcome)`` triples, outcome ``"a"`` (i won), ``"b"``
    (j won) or ``"tie"`` (half a win each), by the MM iteration (Hunter 2004). Items are
    whatever hashable labels the caller uses, e.g. ``(run, step)``."""
    wins: dict[Hashable, float] = defaultdict(float)
    games: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    beats: dict[Hashable, set[Hashable]] = defaultdict(set)
    items: list[Hashable] = []
    for i, j, out in outcomes:
        if out not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}; got {out!r}")
        if i == j:
            raise ValueError(f"an item cannot be compared with itself ({i!r})")
        for x in (i, j):
            if x not in wins:
                wins[x] = 0.0
                items.append(x)
        wins[i] += 1.0 if out == "a" else 0.5 if out == "tie" else 0.0
        wins[j] += 1.0 if out == "b" else 0.5 if out == "tie" else 0.0
        games[(i, j)] += 1
        games[(j, i)] += 1
        if out in ("a", "tie"):
            beats[i].add(j)
        if out in ("b", "tie"):
            beats[j].add(i)
    if not items:
        return BradleyTerry({}, False, 0)
    regularised = not _strongly_connected(items, beats)
    if regularised:  # one virtual tie per compared pair keeps every score finite
        for (i, j) in list(games):
            games[(i, j)] += 1
            wins[i] += 0.5
    opponents: dict[Hashable, list[tuple[Hashable, float]]] = defaultdict(list)
    for (i, j), n in games.items():
        opponents[i].append((j, n))
    pi = dict.fromkeys(items, 1.0 / len(items))
    it = 0
    while it < max_iter:
        it += 1
        new = {i: wins[i] / sum(n / (pi[i] + pi[j]) for j, n in opponents[i]) for i in items}
        total = sum(new.values())
        new = {i: v / total for i, v in new.items()}
        delta = max(abs(new[i] - pi[i]) for i in items)
        pi = new
        if delta < tol:
            break
    return BradleyTerry(pi, regularised, it)


def cohen_kappa(ratings: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two judges' categorical ratings of the same items, ``(r1, r2)`` per
    item: (p_o − p_e) / (1 − p_e). None for no items; 1.0 when both agree perfectly on a
    single category (p_e = 1)."""
    n = len(ratings)
    if n == 0:
        return None
    po = sum(a == b for a, b in ratings) / n
    c1: dict[str, int] = defaultdict(int)
    c2: dict[str, int] = defaultdict(int)
    for a, b in ratings:
        c1[a] += 1
        c2[b] += 1
    pe = sum(c1[k] * c2[k] for k in set(c1) | set(c2)) / (n * n)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else None
    return (po - pe) / (1 - pe)


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa over items each rated by two or more judges (the counts may differ per
    item): P̄ = mean_i (Σ_k n_ik² − n_i) / (n_i (n_i − 1)), P̄_e = Σ_k p_k², κ = (P̄ − P̄_e) /
    (1 − P̄_e) with p_k the share of all ratings in category k. None when no item has two."""
    rated = [list(r) for r in items if len(r) >= 2]
    if not rated:
        return None
    agree = []
    totals: dict[str, int] = defaultdict(int)
    for r in rated:
        counts: dict[str, int] = defaultdict(int)
        for c in r:
            counts[c] += 1
            totals[c] += 1
        m = len(r)
        agree.append((sum(v * v for v in counts.values()) - m) / (m * (m - 1)))
    p_bar = sum(agree) / len(agree)
    all_n = sum(totals.values())
    pe = sum((v / all_n) ** 2 for v in totals.values())
    if pe >= 1.0:
        return 1.0 if p_bar >= 1.0 else None
    return (p_bar - pe) / (1 - pe)

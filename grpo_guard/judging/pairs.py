"""Which eval samples are judged against which (pure functions of sample rows).

A *checkpoint* is ``(run_id, step)``; a *comparison* is two checkpoints. Three kinds:

* ``matched``: two or more runs at the same eval steps (every pair of runs at each step);
* ``steps``:   two or more steps of one run (every pair of the steps), e.g. best-gold vs last;
* ``base``:    each step of each run against the same run's step 0 (its base model).

A comparison's candidate pairs are the samples of the same prompt and seed in both
checkpoints. ``draw`` orders the pool so that every prefix is balanced over prompts (prompts
in turn, and within a prompt the comparisons in turn), then keeps the first ``n``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MODES = ("matched", "steps", "base")
Checkpoint = tuple[int, int]


class SampleLike(Protocol):
    id: int
    run_id: int
    step: int
    prompt: str
    seed: int
    gold: float | None


@dataclass(frozen=True)
class Candidate:
    """One pair to judge: sample ids of the two checkpoints of ``comparison`` (A first)."""

    a: int
    b: int
    prompt: str
    comparison: tuple[Checkpoint, Checkpoint]


def best_gold_step(samples: Sequence[SampleLike]) -> int | None:
    """The eval step with the highest mean gold over its samples (the earliest on a tie)."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        if s.gold is not None:
            by_step[s.step].append(float(s.gold))
    if not by_step:
        return None
    return max(sorted(by_step), key=lambda st: sum(by_step[st]) / len(by_step[st]))


def resolve_steps(tokens: Sequence[str | int], steps: Sequence[int], samples: Sequence[SampleLike],
                  run_id: int) -> list[int]:
    """Step tokens (ints, ``best``, ``last``) of one run -> its eval steps; ValueError naming a
    step the run has no samples at."""
    out: list[int] = []
    for t in tokens:
        text = str(t).strip().lower()
        if text == "last":
            if not steps:
                raise ValueError(f"run {run_id} has no eval samples")
            st = steps[-1]
        elif text == "best":
            st = best_gold_step([s for s in samples if s.run_id == run_id])
            if st is None:
                raise ValueError(f"run {run_id} has no gold scores to pick its best step from")
        else:
            try:
                st = int(text)
            except ValueError:
                raise ValueError(f"a step is a number, 'best' or 'last'; got {t!r}") from None
            if st not in steps:
                raise ValueError(f"run {run_id} has no eval samples at step {st} (it has {_fmt_steps(steps)})")
        if st not in out:
            out.append(st)
    return out


def _fmt_steps(steps: Sequence[int]) -> str:
    return ", ".join(map(str, steps[:12])) + (" ..." if len(steps) > 12 else "") if steps else "none"


def comparisons(mode: str, runs: Sequence[int], step_tokens: Sequence[str | int] | None,
                samples: Sequence[SampleLike]) -> list[tuple[Checkpoint, Checkpoint]]:
    """The checkpoint pairs of a session; ValueError (one sentence) when it cannot be built."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    runs = list(dict.fromkeys(int(r) for r in runs))
    steps_of: dict[int, list[int]] = {r: sorted({s.step for s in samples if s.run_id == r}) for r in runs}
    for r in runs:
        if not steps_of[r]:
            raise ValueError(f"run {r} has no eval samples to judge")
    if mode == "matched":
        if len(runs) < 2:
            raise ValueError("judging runs at matched steps needs at least two runs")
        common = sorted(set.intersection(*(set(steps_of[r]) for r in runs)))
        if not common:
            raise ValueError(f"runs {', '.join(map(str, runs))} share no eval step")
        chosen = common
        if step_tokens:
            chosen = []
            for r in runs:
                for st in resolve_steps(step_tokens, steps_of[r], samples, r):
                    if st not in common:
                        raise ValueError(f"step {st} is not an eval step of every run (shared: {_fmt_steps(common)})")
                    if st not in chosen:
                        chosen.append(st)
            chosen.sort()
        return [((a, st), (b, st)) for st in chosen for i, a in enumerate(runs) for b in runs[i + 1:]]
    if mode == "steps":
        if len(runs) != 1:
            raise ValueError("judging steps of one run takes exactly one run")
        r = runs[0]
        chosen = resolve_steps(step_tokens or ["best", "last"], steps_of[r], samples, r)
        if len(chosen) < 2:
            raise ValueError(f"judging steps of run {r} needs two different steps; got {_fmt_steps(chosen)}")
        return [((r, a), (r, b)) for i, a in enumerate(chosen) for b in chosen[i + 1:]]
    out = []
    for r in runs:  # base: against step 0
        if 0 not in steps_of[r]:
            raise ValueError(f"run {r} has no eval samples at step 0 (its base model)")
        chosen = resolve_steps(step_tokens, steps_of[r], samples, r) if step_tokens else steps_of[r]
        out += [((r, st), (r, 0)) for st in chosen if st != 0]
    if not out:
        raise ValueError("judging against the base model needs an eval step after step 0")
    return out


def candidates(comps: Sequence[tuple[Checkpoint, Checkpoint]], samples: Sequence[SampleLike]) -> list[Candidate]:
    """Every (prompt, seed) both checkpoints of a comparison have, as a candidate pair."""
    index: dict[tuple[int, int, str, int], int] = {(s.run_id, s.step, s.prompt, s.seed): s.id for s in samples}
    keys: dict[Checkpoint, list[tuple[str, int]]] = defaultdict(list)
    for s in samples:
        keys[(s.run_id, s.step)].append((s.prompt, s.seed))
    out = []
    for ca, cb in comps:
        for prompt, seed in sorted(keys.get(ca, [])):
            b = index.get((*cb, prompt, seed))
            if b is not None:
                out.append(Candidate(index[(*ca, prompt, seed)], b, prompt, (ca, cb)))
    return out


def _round_robin(groups: Sequence[Sequence[Any]]) -> list[Any]:
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def draw(pool: Sequence[Candidate], n: int | None, rng: random.Random) -> list[Candidate]:
    """The first ``n`` (all when None) of the pool in a prompt-balanced order: prompts take turns
    (in a random order), and within a prompt the comparisons take turns (random seeds each)."""
    if n is not None and n < 1:
        raise ValueError(f"the number of pairs must be at least 1; got {n}")
    by_prompt: dict[str, dict[Any, list[Candidate]]] = defaultdict(lambda: defaultdict(list))
    for c in pool:
        by_prompt[c.prompt][c.comparison].append(c)
    prompts = sorted(by_prompt)
    rng.shuffle(prompts)
    groups = []
    for p in prompts:
        comps = sorted(by_prompt[p])
        rng.shuffle(comps)
        lists = [list(by_prompt[p][c]) for c in comps]
        for lst in lists:
            rng.shuffle(lst)
        groups.append(_round_robin(lists))
    ordered = _round_robin(groups)
    return ordered if n is None else ordered[:n]


def infer_mode(runs: Sequence[int], base: bool = False) -> str:
    """``base`` when asked; ``steps`` for one run; ``matched`` for several."""
    if base:
        return "base"
    return "steps" if len(set(runs)) == 1 else "matched"


def spec_label(spec: Mapping[str, Any]) -> str:
    """A short human label of a session spec, for lists (never shown while judging)."""
    runs = ", ".join(f"#{r}" for r in spec.get("runs", []))
    steps = spec.get("steps") or []
    tail = f" steps {', '.join(map(str, steps))}" if steps else ""
    return f"{spec.get('mode', '?')}: {runs}{tail}"

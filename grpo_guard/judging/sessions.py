"""Judging sessions on the store: create one from runs and steps, hand out the next blind pair
to a judge, record choices, and summarise them (win rates with Wilson intervals per pair of
checkpoints and per task family, Bradley–Terry scores, agreement between judges). The web page
(``app/judge_routes.py``), the results page and the CLI all call these. Imports no torch."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from grpo_guard.judging import pairs as P
from grpo_guard.judging.stats import BradleyTerry, WinRate, bradley_terry, cohen_kappa, fleiss_kappa, win_rate
from grpo_guard.store import judgments as J

DEFAULT_PAIRS = 100
MAX_PAIRS = 20_000
REASONS = ("prompt alignment", "image quality", "artifacts")
Checkpoint = tuple[int, int]


def new_session(runs: Sequence[int], steps: Sequence[str | int] | None = None, *, pairs: int | None = DEFAULT_PAIRS,
                base: bool = False, name: str = "", created_by: str = "", seed: int | None = None) -> int:
    """Create a judging session over ``runs`` (see ``pairs.comparisons`` for the modes; the mode
    follows from the runs and ``base``) with ``pairs`` sample pairs balanced over prompts.
    ValueError (one sentence) when it cannot be built; nothing is written then."""
    runs = list(dict.fromkeys(int(r) for r in runs))
    if not runs:
        raise ValueError("name at least one run to judge")
    if pairs is not None and not 1 <= int(pairs) <= MAX_PAIRS:
        raise ValueError(f"the number of pairs must be between 1 and {MAX_PAIRS}; got {pairs}")
    samples = J.run_samples(runs)
    mode = P.infer_mode(runs, base)
    comps = P.comparisons(mode, runs, [str(s) for s in steps] if steps else None, samples)
    pool = P.candidates(comps, samples)
    if not pool:
        raise ValueError("the compared checkpoints share no prompt and seed, so there is nothing to judge")
    seed = random.SystemRandom().randrange(2**31) if seed is None else int(seed)
    drawn = P.draw(pool, MAX_PAIRS if pairs is None else int(pairs), random.Random(seed))  # None: all, up to the cap
    spec = {"mode": mode, "runs": runs, "steps": sorted({st for c in comps for _, st in c}),
            "requested_steps": [str(s) for s in steps] if steps else [], "pairs": len(drawn), "seed": seed,
            "comparisons": [[list(a), list(b)] for a, b in comps]}
    return J.create_session(spec, [(c.a, c.b) for c in drawn], name=name, created_by=created_by)


# ---- handing out pairs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    done: int
    total: int


def progress(session: J.JudgingSessionRow, judge: str) -> Progress:
    """How many of the session's pairs this judge has judged (in any session)."""
    seen = J.judged_pairs(judge)
    return Progress(sum(frozenset(p) in seen for p in session.pairs), len(session.pairs))


def next_pair(session: J.JudgingSessionRow, judge: str, pending: Iterable[frozenset[int]] = ()
              ) -> tuple[J.JudgeSample, J.JudgeSample] | None:
    """The session's first pair (in its balanced order) that this judge has not judged in any
    session and has not been handed already (``pending``), with both samples; pairs whose
    samples were deleted are skipped. None when the judge is done."""
    skip = J.judged_pairs(judge) | set(pending)
    todo = [p for p in session.pairs if frozenset(p) not in skip]
    for lo in range(0, len(todo), 50):
        chunk = todo[lo:lo + 50]
        rows = J.samples_by_id(i for p in chunk for i in p)
        for a, b in chunk:
            if a in rows and b in rows:
                return rows[a], rows[b]
    return None


def coin(rng: random.Random | None = None) -> bool:
    """Whether sample A goes on the left: a fair coin per trial (the system's CSPRNG, so no
    judge can learn the sequence)."""
    return (rng or _SYSTEM).random() < 0.5


_SYSTEM = random.SystemRandom()


# ---- summaries ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairStat:
    a: Checkpoint
    b: Checkpoint
    family: str
    rate: WinRate


KAPPA_NAMES = {"cohen": "Cohen's", "fleiss": "Fleiss'"}


@dataclass(frozen=True)
class Agreement:
    method: str  # "cohen" | "fleiss"
    kappa: float | None
    items: int
    judges: int


@dataclass(frozen=True)
class Summary:
    session_id: int
    judgments: int
    judges: tuple[str, ...]
    pairs: tuple[PairStat, ...]
    families: tuple[PairStat, ...]
    bradley_terry: tuple[BradleyTerry, ...]  # one fit per group of >= 3 checkpoints connected by judged pairs
    agreement: Agreement | None
    reasons: dict[str, int]
    median_decide_ms: float | None

    def to_dict(self) -> dict:
        def ps(p: PairStat) -> dict:
            r = p.rate
            return {"a": list(p.a), "b": list(p.b), "family": p.family, "wins": r.wins, "losses": r.losses,
                    "ties": r.ties, "n": r.n, "win_rate": r.rate, "lo": r.lo, "hi": r.hi}

        bt = [{"scores": [{"run": k[0], "step": k[1], "score": v} for k, v in g.scores.items()],
               "regularised": g.regularised} for g in self.bradley_terry]
        ag = None if self.agreement is None else self.agreement.__dict__
        return {"session": self.session_id, "judgments": self.judgments, "judges": list(self.judges),
                "pairs": [ps(p) for p in self.pairs], "families": [ps(p) for p in self.families],
                "bradley_terry": bt, "agreement": ag, "reasons": self.reasons,
                "median_decide_ms": self.median_decide_ms}


def _count(rows: Iterable[J.JudgmentRow], key) -> dict:
    counts: dict = defaultdict(lambda: [0, 0, 0])
    for j in rows:
        counts[key(j)][("a", "b", "tie").index(j.outcome)] += 1
    return counts


def agreement(rows: Sequence[J.JudgmentRow]) -> Agreement | None:
    """Cohen's kappa when exactly two judges judged common pairs, Fleiss' for three or more
    (over the pairs judged by at least two), on outcomes in the pair's own frame."""
    by_pair: dict[frozenset[int], dict[str, str]] = defaultdict(dict)
    for j in rows:
        by_pair[frozenset((j.sample_a_id, j.sample_b_id))][j.judge] = j.outcome
    shared = {k: v for k, v in by_pair.items() if len(v) >= 2}
    judges = sorted({name for v in shared.values() for name in v})
    if len(judges) < 2:
        return None
    if len(judges) == 2:
        j1, j2 = judges
        items = [(v[j1], v[j2]) for v in shared.values()]
        return Agreement("cohen", cohen_kappa(items), len(items), 2)
    return Agreement("fleiss", fleiss_kappa([list(v.values()) for v in shared.values()]), len(shared), len(judges))


def components(edges: Iterable[tuple[Checkpoint, Checkpoint]]) -> list[frozenset[Checkpoint]]:
    """The groups of checkpoints connected by judged pairs, ordered by their smallest member.
    Bradley–Terry scores compare checkpoints only through chains of judged pairs: runs judged
    at matched steps form one group per step, each run against its base one group per run."""
    adj: dict[Checkpoint, set[Checkpoint]] = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    out, seen = [], set()
    for start in sorted(adj):
        if start in seen:
            continue
        group, todo = {start}, [start]
        while todo:
            for nxt in adj[todo.pop()] - group:
                group.add(nxt)
                todo.append(nxt)
        seen |= group
        out.append(frozenset(group))
    return out


def summarize(rows: Sequence[J.JudgmentRow], session_id: int = 0) -> Summary:
    """Every statistic of a set of judgments (pure: tests feed it rows)."""
    pair_counts = _count(rows, lambda j: ((j.a_run_id, j.a_step), (j.b_run_id, j.b_step)))
    fam_counts = _count([j for j in rows if j.family], lambda j: (j.family, (j.a_run_id, j.a_step), (j.b_run_id, j.b_step)))
    pairs = tuple(PairStat(a, b, "", win_rate(*c)) for (a, b), c in sorted(pair_counts.items()))
    fams = tuple(PairStat(a, b, f, win_rate(*c)) for (f, a, b), c in sorted(fam_counts.items()))
    games = [((j.a_run_id, j.a_step), (j.b_run_id, j.b_step), j.outcome) for j in rows
             if (j.a_run_id, j.a_step) != (j.b_run_id, j.b_step)]
    # two checkpoints are already summarised by their win rate; scores need three or more
    bt = tuple(bradley_terry([g for g in games if g[0] in group])
               for group in components((a, b) for a, b in pair_counts if a != b) if len(group) >= 3)
    reasons: dict[str, int] = defaultdict(int)
    for j in rows:
        for r in j.reasons:
            reasons[r] += 1
    times = sorted(j.decide_ms for j in rows if j.decide_ms is not None)
    median = None
    if times:
        mid = len(times) // 2
        median = float(times[mid]) if len(times) % 2 else (times[mid - 1] + times[mid]) / 2
    return Summary(session_id, len(rows), tuple(sorted({j.judge for j in rows})), pairs, fams, bt, agreement(rows),
                   dict(sorted(reasons.items())), median)


def session_summary(session_id: int) -> Summary:
    J.get_session(session_id)  # a LookupError for an unknown id
    return summarize(J.judgments(session_id=session_id), int(session_id))


def checkpoint_rates(rows: Iterable[J.JudgmentRow]) -> dict[Checkpoint, list[int]]:
    """``{(run, step): [wins, losses, ties]}`` of each checkpoint against every checkpoint it
    was judged against."""
    out: dict[Checkpoint, list[int]] = defaultdict(lambda: [0, 0, 0])
    for j in rows:
        a, b = (j.a_run_id, j.a_step), (j.b_run_id, j.b_step)
        if j.outcome == "tie":
            out[a][2] += 1
            out[b][2] += 1
        else:
            win, lose = (a, b) if j.outcome == "a" else (b, a)
            out[win][0] += 1
            out[lose][1] += 1
    return out


def human_series(groups: Mapping[str, Sequence[int]]) -> dict[str, list[tuple[int, WinRate]]]:
    """The "human" series: per label (a run, or an experiment arm pooling its seeds' runs),
    ``[(step, win rate)]`` of its checkpoints against every checkpoint they were judged
    against, in every session; steps without judgments are left out."""
    ids = sorted({int(r) for rs in groups.values() for r in rs})
    rates = checkpoint_rates(J.judgments(run_ids=ids)) if ids else {}
    out: dict[str, list[tuple[int, WinRate]]] = {}
    for label, rs in groups.items():
        members = {int(r) for r in rs}
        by_step: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
        for (run, step), c in rates.items():
            if run in members:
                by_step[step] = [x + y for x, y in zip(by_step[step], c, strict=True)]
        if by_step:
            out[label] = [(st, win_rate(*by_step[st])) for st in sorted(by_step)]
    return out


# ---- export ---------------------------------------------------------------------------------
EXPORT_FIELDS = ("id", "session_id", "judge", "sample_a_id", "sample_b_id", "a_run_id", "a_step", "b_run_id",
                 "b_step", "prompt", "seed", "family", "left", "choice", "outcome", "reasons", "decide_ms", "created_at")


def export(session_id: int, fmt: str) -> str:
    """The session's judgments as CSV (reasons joined by ';') or JSON lines."""
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"format must be csv or jsonl; got {fmt!r}")
    J.get_session(session_id)
    rows = [j.to_dict() for j in J.judgments(session_id=session_id)]
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "reasons": ";".join(r["reasons"])})
    return buf.getvalue()


def summary_text(s: Summary, label=lambda c: f"run {c[0]} step {c[1]}") -> str:
    """The summary as the CLI prints it."""
    lines = [f"session {s.session_id}: {s.judgments} judgment(s) by {len(s.judges)} judge(s)"
             + (f" ({', '.join(s.judges)})" if s.judges else "")]
    if s.pairs:
        lines.append("win rate of A over B (ties count half), Wilson 95 % interval:")
        lines += [f"  {label(p.a)} vs {label(p.b)}: {p.rate.fmt()}" for p in s.pairs]
    if s.families:
        lines.append("per task family:")
        lines += [f"  [{p.family}] {label(p.a)} vs {label(p.b)}: {p.rate.fmt()}" for p in s.families]
    for bt in s.bradley_terry:
        note = " (regularised: some checkpoint won or lost every comparison)" if bt.regularised else ""
        lines.append(f"Bradley–Terry scores (sum 1 over {len(bt.scores)} connected checkpoints){note}:")
        lines += [f"  {label(k)}: {v:.4f}" for k, v in sorted(bt.scores.items(), key=lambda kv: -kv[1])]
    if s.agreement is not None:
        a = s.agreement
        k = "undefined" if a.kappa is None else f"{a.kappa:.3f}"
        lines.append(f"agreement: {KAPPA_NAMES[a.method]} kappa {k} over {a.items} pair(s), "
                     f"{a.judges} judges")
    if s.reasons:
        lines.append("reasons: " + ", ".join(f"{k} {v}" for k, v in s.reasons.items()))
    if s.median_decide_ms is not None:
        lines.append(f"median time to decide: {s.median_decide_ms / 1000:.2f} s")
    return "\n".join(lines)

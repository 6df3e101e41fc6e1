"""Named queries of human judging (migration 0007): judging sessions, the eval samples they
draw from, and judgments. The statistics live in ``grpo_guard.judging``; this module only
reads and writes rows. Imports no torch.

A judge judges a sample pair at most once, in any session: ``add_judgment`` returns False
and writes nothing for a pair the judge already judged (the unique key on (session, judge,
pair) also holds when two identical inserts race on PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from grpo_guard.store.db import RunNotFoundError, StoreError, as_utc, session_scope, utcnow
from grpo_guard.store.entities import stored_json
from grpo_guard.store.models import EvalSample, JudgingSession, Judgment

CHOICES = ("left", "right", "tie")
MAX_REASONS = 8
MAX_ID = 2**31 - 1  # session and run ids are 32-bit INTEGER columns


def _id_in_range(i: int) -> bool:
    """Whether an id can name a row at all: a bigger one (from a URL or the CLI) is simply not
    found, instead of overflowing the database driver."""
    return 0 < i <= MAX_ID


class JudgingSessionNotFoundError(RunNotFoundError):
    """No judging session has this id (a LookupError, like a missing run)."""


@dataclass(frozen=True)
class JudgeSample:
    """An eval sample as judging needs it (with its row id, which judgments point at)."""

    id: int
    run_id: int
    step: int
    prompt: str
    seed: int
    image_location: str
    gold: float | None
    prompt_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The prompt's task family (GenEval's ``tag``), '' when the prompt carries none."""
        tag = self.prompt_meta.get("tag")
        return str(tag)[:80] if isinstance(tag, str) else ""


@dataclass(frozen=True)
class JudgingSessionRow:
    id: int
    name: str
    spec: dict[str, Any]
    pairs: tuple[tuple[int, int], ...]
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class JudgmentRow:
    id: int
    session_id: int
    judge: str
    sample_a_id: int
    sample_b_id: int
    a_run_id: int
    a_step: int
    b_run_id: int
    b_step: int
    prompt: str
    seed: int
    family: str
    left_sample_id: int
    choice: str
    reasons: tuple[str, ...]
    decide_ms: int | None
    created_at: datetime

    @property
    def outcome(self) -> str:
        """The choice in the pair's own frame: 'a' (sample A preferred), 'b' or 'tie'."""
        if self.choice == "tie":
            return "tie"
        a_left = self.left_sample_id == self.sample_a_id
        return "a" if (self.choice == "left") == a_left else "b"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id, "judge": self.judge,
                "sample_a_id": self.sample_a_id, "sample_b_id": self.sample_b_id,
                "a_run_id": self.a_run_id, "a_step": self.a_step, "b_run_id": self.b_run_id, "b_step": self.b_step,
                "prompt": self.prompt, "seed": self.seed, "family": self.family,
                "left": "a" if self.left_sample_id == self.sample_a_id else "b", "choice": self.choice,
                "outcome": self.outcome, "reasons": list(self.reasons), "decide_ms": self.decide_ms,
                "created_at": self.created_at.isoformat()}


def _session_row(r: JudgingSession) -> JudgingSessionRow:
    pairs = tuple((int(p[0]), int(p[1])) for p in stored_json(r.pairs_json, []) if isinstance(p, list) and len(p) == 2)
    return JudgingSessionRow(id=r.id, name=r.name, spec=stored_json(r.spec_json, {}), pairs=pairs,
                             created_by=r.created_by or "", created_at=as_utc(r.created_at))


# ---- sessions -------------------------------------------------------------------------------
def create_session(spec: Mapping[str, Any], pairs: Sequence[tuple[int, int]], *, name: str = "",
                   created_by: str = "") -> int:
    """Insert a judging session over ``pairs`` of sample ids (in the order judges get them)."""
    name = (name or "").strip()
    if len(name) > 200:
        raise ValueError("a judging session name is at most 200 characters")
    if not pairs:
        raise ValueError("a judging session needs at least one pair of samples")
    with session_scope(write=True) as s:
        row = JudgingSession(name=name, spec_json=json.dumps(dict(spec), sort_keys=True),
                             pairs_json=json.dumps([[int(a), int(b)] for a, b in pairs]),
                             created_by=str(created_by or "")[:200], created_at=utcnow())
        s.add(row)
        s.flush()
        if not row.name:
            row.name = f"judging-{row.id}"
        return row.id


def get_session(session_id: int) -> JudgingSessionRow:
    """One session; ``JudgingSessionNotFoundError`` (a LookupError) if there is none."""
    if not _id_in_range(int(session_id)):
        raise JudgingSessionNotFoundError(f"no judging session with id {session_id}")
    with session_scope() as s:
        r = s.get(JudgingSession, int(session_id))
        if r is None:
            raise JudgingSessionNotFoundError(f"no judging session with id {session_id}")
        return _session_row(r)


def list_sessions(*, limit: int = 200) -> list[JudgingSessionRow]:
    """Sessions, newest first."""
    with session_scope() as s:
        rows = s.scalars(select(JudgingSession).order_by(JudgingSession.id.desc()).limit(max(1, int(limit)))).all()
        return [_session_row(r) for r in rows]


# ---- samples --------------------------------------------------------------------------------
_COLS = (EvalSample.id, EvalSample.run_id, EvalSample.step, EvalSample.prompt, EvalSample.seed,
         EvalSample.image_location, EvalSample.gold, EvalSample.prompt_meta)


def _judge_sample(r: Any) -> JudgeSample:
    return JudgeSample(id=int(r.id), run_id=r.run_id, step=r.step, prompt=r.prompt, seed=r.seed,
                       image_location=r.image_location, gold=r.gold, prompt_meta=stored_json(r.prompt_meta, {}))


def run_samples(run_ids: Iterable[int]) -> list[JudgeSample]:
    """Every eval sample of the runs, by run, step, prompt and seed."""
    ids = [int(i) for i in run_ids if _id_in_range(int(i))]
    if not ids:
        return []
    with session_scope() as s:
        rows = s.execute(select(*_COLS).where(EvalSample.run_id.in_(ids)).order_by(
            EvalSample.run_id, EvalSample.step, EvalSample.prompt, EvalSample.seed)).all()
    return [_judge_sample(r) for r in rows]


def samples_by_id(sample_ids: Iterable[int]) -> dict[int, JudgeSample]:
    """The samples with these ids that still exist (a deleted run's are gone)."""
    ids = sorted({int(i) for i in sample_ids})
    out: dict[int, JudgeSample] = {}
    with session_scope() as s:
        for lo in range(0, len(ids), 500):
            for r in s.execute(select(*_COLS).where(EvalSample.id.in_(ids[lo:lo + 500]))).all():
                out[int(r.id)] = _judge_sample(r)
    return out


# ---- judgments ------------------------------------------------------------------------------
def _clean_reasons(reasons: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for r in reasons or ():
        r = str(r).strip()[:60]
        if r and r not in out:
            out.append(r)
    if len(out) > MAX_REASONS:
        raise ValueError(f"at most {MAX_REASONS} reason tags per judgment")
    return out


def add_judgment(session_id: int, judge: str, a: JudgeSample, b: JudgeSample, *, left_sample_id: int,
                 choice: str, reasons: Iterable[str] | None = None, decide_ms: int | None = None) -> bool:
    """Store one choice; False when this judge already judged this pair, in this session or
    any other, either way round (a retry, a double key press, or a second tab that was handed
    the same pair: nothing is written, so no judge counts twice on one pair)."""
    judge = str(judge or "").strip()
    if not judge or len(judge) > 200:
        raise ValueError("a judge name is 1 to 200 characters")
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
    if int(left_sample_id) not in (a.id, b.id):
        raise ValueError("the left sample must be one of the two judged samples")
    if decide_ms is not None:
        decide_ms = max(0, min(int(decide_ms), 2**31 - 1))
    tags = json.dumps(_clean_reasons(reasons))
    seen = (Judgment.judge == judge,
            or_(and_(Judgment.sample_a_id == a.id, Judgment.sample_b_id == b.id),
                and_(Judgment.sample_a_id == b.id, Judgment.sample_b_id == a.id)))
    try:
        with session_scope(write=True) as s:
            if not _id_in_range(int(session_id)) or s.get(JudgingSession, int(session_id)) is None:
                raise JudgingSessionNotFoundError(f"no judging session with id {session_id}")
            if s.scalar(select(Judgment.id).where(*seen).limit(1)) is not None:
                return False
            s.add(Judgment(session_id=int(session_id), judge=judge, sample_a_id=a.id, sample_b_id=b.id,
                           a_run_id=a.run_id, a_step=a.step, b_run_id=b.run_id, b_step=b.step, prompt=a.prompt,
                           seed=a.seed, family=a.family, left_sample_id=int(left_sample_id), choice=choice,
                           reasons=tags, decide_ms=decide_ms, created_at=utcnow()))
    except StoreError as e:  # PostgreSQL: a concurrent identical insert lost the race on the unique key
        if isinstance(e, LookupError) or "unique" not in str(e).lower():
            raise
        return False
    return True


def _judgment_row(r: Judgment) -> JudgmentRow:
    return JudgmentRow(id=r.id, session_id=r.session_id, judge=r.judge, sample_a_id=int(r.sample_a_id),
                       sample_b_id=int(r.sample_b_id), a_run_id=r.a_run_id, a_step=r.a_step, b_run_id=r.b_run_id,
                       b_step=r.b_step, prompt=r.prompt, seed=r.seed, family=r.family or "",
                       left_sample_id=int(r.left_sample_id), choice=r.choice,
                       reasons=tuple(str(x) for x in stored_json(r.reasons, [])), decide_ms=r.decide_ms,
                       created_at=as_utc(r.created_at))


def judgments(*, session_id: int | None = None, run_ids: Iterable[int] | None = None,
              judge: str | None = None) -> list[JudgmentRow]:
    """Judgments in the order they were made, filtered by session, by runs (either side in
    ``run_ids``) and by judge."""
    conds = []
    if session_id is not None:
        if not _id_in_range(int(session_id)):
            return []
        conds.append(Judgment.session_id == int(session_id))
    if run_ids is not None:
        ids = [int(i) for i in run_ids if _id_in_range(int(i))]
        if not ids:
            return []
        conds.append(or_(Judgment.a_run_id.in_(ids), Judgment.b_run_id.in_(ids)))
    if judge is not None:
        conds.append(Judgment.judge == str(judge))
    with session_scope() as s:
        rows = s.scalars(select(Judgment).where(*conds).order_by(Judgment.id)).all()
        return [_judgment_row(r) for r in rows]


def judged_pairs(judge: str) -> set[frozenset[int]]:
    """Every sample pair this judge has judged, in any session, either way round."""
    with session_scope() as s:
        rows = s.execute(select(Judgment.sample_a_id, Judgment.sample_b_id).where(Judgment.judge == str(judge))).all()
    return {frozenset((int(a), int(b))) for a, b in rows}

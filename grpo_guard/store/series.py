"""Read queries for the run views: metric series, per-denoising-step statistics, eval samples,
checkpoints and logs. Re-exported by ``grpo_guard.store.queries`` (the app imports that).

Every query is served by a primary key or an index prefixed by ``run_id``; long series are
downsampled in SQL (a stride per key with ``ROW_NUMBER() OVER``, always keeping the last point),
so a 1 Hz refresh stays cheap however long the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, or_, select, tuple_

from grpo_guard.store import artifacts
from grpo_guard.store.db import as_utc, session_scope
from grpo_guard.store.entities import CheckpointRow, LogRow, SampleRow
from grpo_guard.store.models import (
    STEP_STAT_COLUMNS,
    Checkpoint,
    EvalSample,
    LogLine,
    Run,
    RunKey,
    Scalar,
    StepStatRow,
)

_SPECIAL = {0: None, 1: math.nan, 2: math.inf, 3: -math.inf}
STEP_STAT_NAMES: tuple[str, ...] = ("sigma", "dt", *STEP_STAT_COLUMNS)
_stats = StepStatRow.__table__.c


def artifact_path(location: str) -> str:
    """The file path of an artifact ``location`` under GG_ARTIFACTS. ValueError for an
    absolute location, a ``..`` segment, or a symlink that escapes the root."""
    return artifacts.resolve(location)


def max_steps(run_ids: Sequence[int]) -> dict[int, int]:
    """The largest step with stored rows, per run (-1: none yet). One primary-key lookup per
    run: the UI's 1 Hz "did anything change" check."""
    ids = [int(i) for i in run_ids]
    if not ids:
        return {}
    with session_scope() as s:
        return dict(s.execute(select(Run.id, Run.last_step).where(Run.id.in_(ids))).tuples().all())


def _keys(run_id: int, kind: str) -> list[str]:
    with session_scope() as s:
        return list(s.scalars(select(RunKey.key).where(RunKey.run_id == int(run_id), RunKey.kind == kind)
                              .order_by(RunKey.key)))


def metric_keys(run_id: int) -> list[str]:
    """Names of the scalar metrics a run has logged, sorted."""
    return _keys(run_id, "scalar")


def step_stats_keys(run_id: int) -> list[str]:
    """Names of the per-denoising-step statistics a run has logged (sigma and dt included)."""
    return _keys(run_id, "step_stat")


def _strided(partition: list[Any], order: Any, max_points: int) -> tuple[Any, Any, int]:
    """Window columns (row number, partition size) for ``_keep``, and the point budget."""
    m = max(2, int(max_points))
    rn = func.row_number().over(partition_by=partition, order_by=order).label("rn")
    n = func.count().over(partition_by=partition).label("n")
    return rn, n, m


def _keep(sub: Any, m: int) -> Any:
    """At most ``m`` rows per partition: all of them when n <= m, else every s-th row with
    s = ceil(n / (m - 1)) (integer division on both backends) plus the last one."""
    return or_(sub.c.n <= m, sub.c.rn == sub.c.n, (sub.c.rn - 1) % ((sub.c.n + (m - 2)) // (m - 1)) == 0)


def metric_series(run_id: int, keys: Sequence[str] | None = None, *, max_points: int = 2000,
                  since_step: int | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for the run's scalars (all keys when ``keys`` is None),
    steps ascending, each key downsampled in SQL to at most ``max_points`` points (the last
    point always kept). ``since_step``: only steps after it (incremental refresh). Non-finite
    values come back as nan / inf."""
    rid = int(run_id)
    if keys is None:
        keys = metric_keys(rid)
    keys = [str(k) for k in keys]
    if not keys:
        return {}
    conds = [Scalar.run_id == rid, Scalar.key.in_(keys)]
    if since_step is not None:
        conds.append(Scalar.step > int(since_step))
    rn, n, m = _strided([Scalar.key], Scalar.step, max_points)
    sub = select(Scalar.key, Scalar.step, Scalar.value, Scalar.special, rn, n).where(*conds).subquery()
    q = select(sub.c.key, sub.c.step, sub.c.value, sub.c.special).where(_keep(sub, m)).order_by(sub.c.key, sub.c.step)
    out: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in keys}
    with session_scope() as s:
        for key, step, value, special in s.execute(q):
            steps, values = out[key]
            steps.append(step)
            values.append(value if not special else _SPECIAL.get(special, math.nan))
    return {k: v for k, v in out.items() if v[0]}


def _stat_column(stat: str) -> Any:
    if stat in STEP_STAT_NAMES:
        return _stats[stat]
    if not isinstance(stat, str) or not stat or len(stat) > 200:
        raise ValueError(f"unknown step statistic {stat!r}")
    return _stats.extra[stat].as_float()  # a statistic without its own column (JSON)


def step_stats_matrix(run_id: int, stat: str, *, max_steps: int = 400
                      ) -> tuple[list[int], list[int], list[list[float | None]]]:
    """``(steps, denoise_indices, matrix)`` with ``matrix[i][j]`` the value of ``stat`` at
    ``steps[i]`` and denoising index ``denoise_indices[j]`` (None where missing), for a
    heatmap. Long runs keep every s-th step (s = ceil(span / (max_steps - 1))) plus the last."""
    rid = int(run_id)
    col = _stat_column(stat)
    with session_scope() as s:
        lo, hi = s.execute(select(func.min(_stats.step), func.max(_stats.step)).where(_stats.run_id == rid)).one()
        if lo is None:
            return [], [], []
        m = max(2, int(max_steps))
        span = hi - lo + 1
        conds = [_stats.run_id == rid]
        if span > m:
            stride = -(-span // (m - 1))
            conds.append(or_((_stats.step - lo) % stride == 0, _stats.step == hi))
        rows = s.execute(select(_stats.step, _stats.denoise_index, col).where(*conds)
                         .order_by(_stats.step, _stats.denoise_index)).all()
    steps = sorted({r[0] for r in rows})
    js = sorted({r[1] for r in rows})
    si, ji = {v: i for i, v in enumerate(steps)}, {v: i for i, v in enumerate(js)}
    matrix: list[list[float | None]] = [[None] * len(js) for _ in steps]
    for step, j, v in rows:
        matrix[si[step]][ji[j]] = v
    return steps, js, matrix


def step_stats_series(run_id: int, stat: str, *, max_points: int = 2000
                      ) -> dict[int, tuple[list[int], list[float]]]:
    """``{denoise_index: (steps, values)}``: one line per denoising step, each downsampled to
    at most ``max_points`` points. Missing values are skipped."""
    rid = int(run_id)
    col = _stat_column(stat).label("v")
    rn, n, m = _strided([_stats.denoise_index], _stats.step, max_points)
    sub = select(_stats.denoise_index, _stats.step, col, rn, n).where(_stats.run_id == rid, col.isnot(None)).subquery()
    q = select(sub.c.denoise_index, sub.c.step, sub.c.v).where(_keep(sub, m)).order_by(sub.c.denoise_index, sub.c.step)
    out: dict[int, tuple[list[int], list[float]]] = {}
    with session_scope() as s:
        for j, step, v in s.execute(q):
            steps, values = out.setdefault(j, ([], []))
            steps.append(step)
            values.append(v)
    return out


# ---- samples --------------------------------------------------------------------------------
def _sample(r: Any) -> SampleRow:
    try:
        scores = json.loads(r.scores) if r.scores else {}
    except ValueError:
        scores = {}
    return SampleRow(run_id=r.run_id, step=r.step, prompt=r.prompt, seed=r.seed,
                     image_location=r.image_location, scores=scores, proxy=r.proxy, gold=r.gold)


_SAMPLE_COLS = (EvalSample.run_id, EvalSample.step, EvalSample.prompt, EvalSample.seed,
                EvalSample.image_location, EvalSample.proxy, EvalSample.gold, EvalSample.scores)


def sample_steps(run_id: int) -> list[int]:
    """Steps at which the run stored eval samples, ascending."""
    with session_scope() as s:
        return list(s.scalars(select(EvalSample.step).where(EvalSample.run_id == int(run_id))
                              .distinct().order_by(EvalSample.step)))


def sample_prompts(run_id: int) -> list[tuple[str, int]]:
    """The run's eval (prompt, seed) pairs, sorted."""
    with session_scope() as s:
        return [tuple(r) for r in s.execute(
            select(EvalSample.prompt, EvalSample.seed).where(EvalSample.run_id == int(run_id))
            .distinct().order_by(EvalSample.prompt, EvalSample.seed))]


def samples_for(run_id: int, *, prompt: str | None = None, seed: int | None = None,
                step: int | None = None) -> list[SampleRow]:
    """A run's samples, optionally for one prompt / seed / step; ordered by step, prompt, seed.
    (prompt, seed) across steps is the "how did this image evolve" strip."""
    conds = [EvalSample.run_id == int(run_id)]
    if prompt is not None:
        conds.append(EvalSample.prompt == prompt)
    if seed is not None:
        conds.append(EvalSample.seed == int(seed))
    if step is not None:
        conds.append(EvalSample.step == int(step))
    with session_scope() as s:
        rows = s.execute(select(*_SAMPLE_COLS).where(*conds)
                         .order_by(EvalSample.step, EvalSample.prompt, EvalSample.seed)).all()
    return [_sample(r) for r in rows]


def samples_across_runs(run_ids: Sequence[int], prompt: str, seed: int, step: int) -> list[SampleRow]:
    """The same (prompt, seed, step) in several runs, in the order of ``run_ids`` (runs
    without that sample are left out): the side-by-side comparison."""
    ids = [int(i) for i in run_ids]
    if not ids:
        return []
    keys = [(i, int(step), prompt, int(seed)) for i in ids]
    with session_scope() as s:
        rows = s.execute(select(*_SAMPLE_COLS).where(
            tuple_(EvalSample.run_id, EvalSample.step, EvalSample.prompt, EvalSample.seed).in_(keys))).all()
    by_run = {r.run_id: _sample(r) for r in rows}
    return [by_run[i] for i in ids if i in by_run]


# ---- checkpoints and logs -------------------------------------------------------------------
def checkpoints(run_id: int) -> list[CheckpointRow]:
    """The run's checkpoints, oldest first."""
    with session_scope() as s:
        rows = s.execute(select(Checkpoint).where(Checkpoint.run_id == int(run_id))
                         .order_by(Checkpoint.step)).scalars().all()
        out = []
        for c in rows:
            try:
                meta = json.loads(c.meta) if c.meta else {}
            except ValueError:
                meta = {}
            out.append(CheckpointRow(run_id=c.run_id, step=c.step, location=c.location, meta=meta,
                                     created_at=as_utc(c.created_at)))
    return out


def log_lines(run_id: int, *, tail: int = 200, level: str | None = None) -> list[LogRow]:
    """The last ``tail`` log lines of a run (all attempts), oldest first; ``level`` filters."""
    conds = [LogLine.run_id == int(run_id)]
    if level:
        conds.append(LogLine.level == level)
    with session_scope() as s:
        rows = s.execute(select(LogLine.id, LogLine.run_id, LogLine.attempt, LogLine.created_at,
                                LogLine.level, LogLine.message)
                         .where(*conds).order_by(LogLine.id.desc()).limit(max(1, int(tail)))).all()
    return [LogRow(id=r.id, run_id=r.run_id, attempt=r.attempt, created_at=as_utc(r.created_at),
                   level=r.level, message=r.message) for r in reversed(rows)]


__all__ = [
    "artifact_path", "checkpoints", "log_lines", "max_steps", "metric_keys", "metric_series",
    "sample_prompts", "sample_steps", "samples_across_runs", "samples_for", "step_stats_keys",
    "step_stats_matrix", "step_stats_series", "STEP_STAT_NAMES",
]

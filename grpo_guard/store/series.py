"""Read queries for the run views: metric series, per-denoising-step statistics, eval samples,
checkpoints and logs. Re-exported by ``grpo_guard.store.queries`` (the app imports that).

Every query is served by a primary key or an index prefixed by ``run_id``; long series are
downsampled in SQL (a stride per key with ``ROW_NUMBER() OVER``, always keeping the last point),
so a 1 Hz refresh stays cheap however long the run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, func, or_, select

from grpo_guard.store import artifacts
from grpo_guard.store.db import as_utc, session_scope
from grpo_guard.store.entities import CheckpointRow, LogRow, SampleRow, stored_json
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


def _stride(n: int, m: int) -> int:
    """Keep every s-th point, s = ceil(n / (m - 1)): at most m - 1 of them, plus the last."""
    return -(-n // (m - 1))


def _fetch(conn: Any, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Run ``sql`` (qmark placeholders) on the raw DBAPI cursor and return plain tuples: the
    hot series queries return tens of thousands of rows, and SQLAlchemy's per-row result
    processing would cost more than the query."""
    if conn.dialect.name == "postgresql":
        sql = sql.replace("%", "%%").replace("?", "%s")
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql, tuple(params))
        return cur.fetchall()
    finally:
        cur.close()


def _window_keep(partition: Any, order: Any, m: int, conds: list[Any], cols: list[Any]) -> Any:
    """A query keeping every s-th row per partition (by row number) plus the last: exact for
    series with gaps, at the price of a sort."""
    rn = func.row_number().over(partition_by=partition, order_by=order).label("rn")
    n = func.count().over(partition_by=partition).label("n")
    sub = select(*cols, rn, n).where(*conds).subquery()
    keep = or_(sub.c.rn == sub.c.n, (sub.c.rn - 1) % ((sub.c.n + (m - 2)) // (m - 1)) == 0)
    return select(*[sub.c[c.name] for c in cols]).where(keep)


def metric_series(run_id: int, keys: Sequence[str] | None = None, *, max_points: int = 2000,
                  since_step: int | None = None) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for the run's scalars (all keys when ``keys`` is None),
    steps ascending, each key downsampled in SQL to at most ``max_points`` points (every s-th
    step, the last point always kept). ``since_step``: only steps after it (incremental
    refresh). Non-finite values come back as nan / inf.

    Each key's first and last step come from two primary-key seeks. A key whose span fits is
    read whole; a longer one with a stride on the step value (exact for contiguous steps, no
    sort); if that returns too few points, the key has gaps and is strided by row number."""
    rid = int(run_id)
    if keys is None:
        keys = metric_keys(rid)
    keys = [str(k) for k in keys]
    if not keys:
        return {}
    m = max(2, int(max_points))
    base = [Scalar.run_id == rid]
    if since_step is not None:
        base.append(Scalar.step > int(since_step))
    cols = [Scalar.key, Scalar.step, Scalar.value, Scalar.special]
    out: dict[str, tuple[list[int], list[float]]] = {}
    since = [] if since_step is None else [int(since_step)]
    after = "" if since_step is None else " AND step > ?"
    select_key = "SELECT key, step, value, special FROM scalars WHERE run_id = ? AND key = ?" + after
    first_last = " UNION ALL ".join(
        f"SELECT ?, ({select_key.replace('key, step, value, special', 'step')} ORDER BY step LIMIT 1), "
        f"({select_key.replace('key, step, value, special', 'step')} ORDER BY step DESC LIMIT 1)" for _ in keys)
    with session_scope() as s:
        conn = s.connection()
        # 1. first and last step of every key: two primary-key seeks each, one round trip
        spans = _fetch(conn, first_last, [x for k in keys for x in (k, rid, k, *since, rid, k, *since)])
        # 2. every key's kept rows in one round trip (members return in key order; sorted below)
        parts, params, strided = [], [], []
        for key, lo, hi in spans:
            if lo is None:
                continue
            if hi - lo + 1 <= m:
                parts.append(select_key)
                params += [rid, key, *since]
            else:
                w = _stride(hi - lo + 1, m)
                parts.append(select_key + " AND ((step - ?) % ? = 0 OR step = ?)")
                params += [rid, key, *since, lo, w, hi]
                strided.append((key, len(range(lo, hi + 1, w))))
        rows = _fetch(conn, " UNION ALL ".join(parts), params) if parts else []
        # 3. a strided key that came back short has gaps: stride it over its rows instead
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[0]] = counts.get(r[0], 0) + 1
        gappy = [key for key, expected in strided if counts.get(key, 0) < 0.9 * expected]
        if gappy:
            rows = [r for r in rows if r[0] not in gappy]
            for key in gappy:
                rows += conn.execute(_window_keep(Scalar.key, Scalar.step, m, [*base, Scalar.key == key], cols)).all()
        for key, step, value, special in rows:
            steps, values = out.setdefault(key, ([], []))
            steps.append(step)
            values.append(value if not special else _SPECIAL.get(special, math.nan))
    for steps, values in out.values():  # each part comes back in primary-key order; make sure
        if any(a > b for a, b in zip(steps, steps[1:], strict=False)):
            order = sorted(range(len(steps)), key=steps.__getitem__)
            steps[:] = [steps[i] for i in order]
            values[:] = [values[i] for i in order]
    return {k: out[k] for k in keys if k in out}


def _stat_column(stat: str) -> Any:
    if stat in STEP_STAT_NAMES:
        return _stats[stat]
    if not isinstance(stat, str) or not stat or len(stat) > 200:
        raise ValueError(f"unknown step statistic {stat!r}")
    return _stats.extra[stat].as_float()  # a statistic without its own column (JSON)


def _stat_rows(run_id: int, col: Any, budget: int) -> list[Any]:
    """(step, denoise_index, value) rows of at most ``budget`` steps of a run, ordered.

    Steps are normally contiguous (one row set per optimizer step), so the kept steps are
    computed (every s-th from the first, plus the last) and fetched by primary key, reading
    only those rows. If the run has gaps, fewer come back, and a stride over the row numbers
    of the distinct steps is used instead."""
    m = max(2, int(budget))
    with session_scope() as s:
        conn = s.connection()
        # two primary-key seeks (SQLite scans the whole run for min() and max() in one query)
        first = "SELECT step FROM step_stats WHERE run_id = ? ORDER BY step"
        lo, hi = _fetch(conn, f"SELECT ({first} LIMIT 1), ({first} DESC LIMIT 1)", [run_id, run_id])[0]
        if lo is None:
            return []
        span = hi - lo + 1
        q = select(_stats.step, _stats.denoise_index, col).where(_stats.run_id == run_id)
        if span <= m:
            return conn.execute(q.order_by(_stats.step, _stats.denoise_index)).all()
        w = _stride(span, m)
        wanted = list(range(lo, hi + 1, w))
        if wanted[-1] != hi:
            wanted.append(hi)
        if isinstance(col, Column):  # a statistic with its own column: the raw, fast path
            head = f"SELECT step, denoise_index, {col.name} FROM step_stats WHERE run_id = ? AND "
            if conn.dialect.name == "postgresql":
                rows = _fetch(conn, head + "step = ANY(?) ORDER BY step, denoise_index", [run_id, wanted])
            else:
                rows = _fetch(conn, head + f"step IN ({', '.join('?' * len(wanted))}) ORDER BY step, denoise_index",
                              [run_id, *wanted])
        else:
            rows = conn.execute(q.where(_stats.step.in_(wanted)).order_by(_stats.step, _stats.denoise_index)).all()
        if len({r[0] for r in rows}) >= 0.9 * len(wanted):
            return rows
        steps = select(_stats.step).where(_stats.run_id == run_id).distinct().subquery()
        kept = _window_keep(None, steps.c.step, m, [], [steps.c.step]).subquery()
        return conn.execute(q.where(_stats.step.in_(select(kept.c.step)))
                            .order_by(_stats.step, _stats.denoise_index)).all()


def step_stats_matrix(run_id: int, stat: str, *, max_steps: int = 400
                      ) -> tuple[list[int], list[int], list[list[float | None]]]:
    """``(steps, denoise_indices, matrix)`` with ``matrix[i][j]`` the value of ``stat`` at
    ``steps[i]`` and denoising index ``denoise_indices[j]`` (None where missing), for a
    heatmap. Long runs keep every s-th step, s = ceil(steps / (max_steps - 1)), plus the last."""
    rows = _stat_rows(int(run_id), _stat_column(stat), max_steps)
    steps = sorted({r[0] for r in rows})
    js = sorted({r[1] for r in rows})
    si, ji = {v: i for i, v in enumerate(steps)}, {v: i for i, v in enumerate(js)}
    matrix: list[list[float | None]] = [[None] * len(js) for _ in steps]
    for step, j, v in rows:
        matrix[si[step]][ji[j]] = v
    return steps, js, matrix


def step_stats_series(run_id: int, stat: str, *, max_points: int = 1000
                      ) -> dict[int, tuple[list[int], list[float]]]:
    """``{denoise_index: (steps, values)}``: one line per denoising step, each downsampled to
    at most ``max_points`` steps (the same steps for every line). Missing values are skipped."""
    out: dict[int, tuple[list[int], list[float]]] = {}
    for step, j, v in _stat_rows(int(run_id), _stat_column(stat), max_points):
        if v is None:
            continue
        steps, values = out.setdefault(j, ([], []))
        steps.append(step)
        values.append(v)
    return dict(sorted(out.items()))


# ---- samples --------------------------------------------------------------------------------
def _sample(r: Any) -> SampleRow:
    return SampleRow(run_id=r.run_id, step=r.step, prompt=r.prompt, seed=r.seed,
                     image_location=r.image_location, scores=stored_json(r.scores, {}), proxy=r.proxy, gold=r.gold,
                     prompt_meta=stored_json(r.prompt_meta, {}))


_SAMPLE_COLS = (EvalSample.run_id, EvalSample.step, EvalSample.prompt, EvalSample.seed, EvalSample.image_location,
                EvalSample.proxy, EvalSample.gold, EvalSample.scores, EvalSample.prompt_meta)


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
    with session_scope() as s:  # served by the unique index (run_id, step, prompt, seed)
        rows = s.execute(select(*_SAMPLE_COLS).where(EvalSample.run_id.in_(ids), EvalSample.step == int(step),
                                                     EvalSample.prompt == prompt, EvalSample.seed == int(seed))).all()
    by_run = {r.run_id: _sample(r) for r in rows}
    return [by_run[i] for i in ids if i in by_run]


# ---- checkpoints and logs -------------------------------------------------------------------
def _on_disk(location: str) -> bool:
    try:
        return os.path.isfile(artifacts.resolve(location))
    except ValueError:
        return False


def checkpoints(run_id: int) -> list[CheckpointRow]:
    """The run's checkpoints, oldest first; ``on_disk`` is False for those whose file is gone."""
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
                                     created_at=as_utc(c.created_at), on_disk=_on_disk(c.location)))
    return out


def best_checkpoint(run_id: int) -> CheckpointRow | None:
    """The run's best-gold checkpoint still on disk: the one marked ``best`` (on_overoptimization:
    stop_keep_best), else the one at the best-gold step its latest checkpoint records; None when
    that one is gone or the run has none."""
    rows = [c for c in checkpoints(run_id) if c.on_disk]
    marked = [c for c in rows if c.meta.get("best")]
    if marked:
        return marked[-1]
    if not rows:
        return None
    best_step = rows[-1].meta.get("best_step")
    return next((c for c in rows if c.step == best_step), None)


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

"""What the Run page shows of a run, cached per process and refreshed incrementally, so a 1 Hz
refresh of a long run costs a few small queries instead of re-reading its whole history.

- Scalars: the first read is downsampled in SQL (``metric_series(max_points=...)``); later reads
  fetch only the last few steps (``since_step``) and splice them in. Once a key holds twice its
  point budget, the next read downsamples in SQL again.
- Per-denoising-step matrices (``step_stats_matrix``, downsampled in SQL to ``HEATMAP_STEPS``
  columns) are one snapshot, re-read together when the run has stored one heatmap column
  (the stride between columns) beyond the last step the snapshot holds, or after
  ``STATS_MAX_AGE`` seconds: a new column is all a heatmap can show. Each re-read bumps the
  versions, so pages redraw only the figures whose statistics were read again.
- Key lists are re-read every ``KEYS_MAX_AGE`` seconds and when the run's last step moved (new
  keys appear with the first training step and the first eval).
- A run whose last step went *backwards* (resumed from a checkpoint, rows pruned) or whose key
  set changed is read afresh.

Thread-safe (Gradio runs handlers in a thread pool): one lock per run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_POINTS = 1000  # per curve
HEATMAP_STEPS = 200  # columns per heatmap
STATS_MAX_AGE = 30.0  # seconds; a heatmap that gained no column is still re-read this often
KEYS_MAX_AGE = 3.0
MAX_RUNS = 32
TAIL_OVERLAP = 2  # steps re-read on each incremental refresh

Matrix = tuple[np.ndarray, np.ndarray, np.ndarray]  # (steps, js, values (steps x js), NaN = missing)


@dataclass
class _Entry:
    keys: tuple[str, ...] = ()
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    last_step: int = -1  # last step covered by ``series``
    key_lists: tuple[list[str], list[str]] | None = None
    key_time: float = 0.0
    key_step: int = -1  # the run's last step at the last key read
    mats: dict[str, Matrix] = field(default_factory=dict)
    mats_time: dict[str, float] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # bumped on each re-read of a matrix
    memo: dict[str, OrderedDict] = field(default_factory=dict)  # namespace -> {key: derived value}
    lock: threading.RLock = field(default_factory=threading.RLock)
    reads: dict[str, int] = field(default_factory=lambda: {"series_full": 0, "series_tail": 0, "stats": 0, "keys": 0})


_ENTRIES: OrderedDict[int, _Entry] = OrderedDict()
_GUARD = threading.Lock()


def _entry(run_id: int) -> _Entry:
    with _GUARD:
        e = _ENTRIES.get(run_id)
        if e is None:
            e = _ENTRIES[run_id] = _Entry()
            while len(_ENTRIES) > MAX_RUNS:
                _ENTRIES.popitem(last=False)
        else:
            _ENTRIES.move_to_end(run_id)
        return e


def forget(run_id: int | None = None) -> None:
    """Drop the cache of one run (or all)."""
    with _GUARD:
        if run_id is None:
            _ENTRIES.clear()
        else:
            _ENTRIES.pop(run_id, None)


def reads(run_id: int) -> dict[str, int]:
    """How many queries of each kind served this run (tests and the benchmark)."""
    return dict(_entry(run_id).reads)


def key_lists(q: Any, run_id: int, last_step: int | None = None) -> tuple[list[str], list[str]]:
    """(scalar keys, per-step statistic keys) of the run, re-read every KEYS_MAX_AGE s and
    whenever ``last_step`` (the run's stored last step) moved since the last read: a run's
    first training step brings its first training keys, and a slow run's page redraws only
    when a step lands, so a list kept from before that step would hide them until the next."""
    e = _entry(run_id)
    with e.lock:
        moved = last_step is not None and last_step != e.key_step
        if e.key_lists is None or moved or time.monotonic() - e.key_time > KEYS_MAX_AGE:
            e.key_lists = (q.metric_keys(run_id), q.step_stats_keys(run_id))
            e.key_time = time.monotonic()
            e.key_step = -1 if last_step is None else last_step
            e.reads["keys"] += 1
        return e.key_lists


def _last(series: dict[str, tuple[list[int], list[float]]]) -> int:
    return max((s[-1] for s, _ in series.values() if s), default=-1)


def series(q: Any, run_id: int, keys: list[str], last_step: int) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for ``keys`` up to ``last_step`` (the run's stored last step)."""
    e = _entry(run_id)
    with e.lock:
        tkeys = tuple(keys)
        full = (tkeys != e.keys or last_step < e.last_step or not e.series
                or any(len(s) > 2 * MAX_POINTS for s, _ in e.series.values()))
        if full:
            e.series = q.metric_series(run_id, list(keys), max_points=MAX_POINTS) if keys else {}
            e.keys = tkeys
            e.reads["series_full"] += 1
        else:
            # Re-read the last TAIL_OVERLAP steps too: a step's eval scalars may land in a later
            # flush than its training scalars, after the cursor already saw that step.
            since = e.last_step - TAIL_OVERLAP
            tail = q.metric_series(run_id, list(keys), max_points=10 * MAX_POINTS, since_step=since)
            for k in set(e.series) | set(tail):
                s, v = e.series.get(k, ([], []))
                cut = next((i for i in range(len(s) - 1, -1, -1) if s[i] <= since), -1) + 1
                ts, tv = tail.get(k, ([], []))
                e.series[k] = (s[:cut] + list(ts), v[:cut] + list(tv))
            e.reads["series_tail"] += 1
        e.last_step = max(last_step, _last(e.series))
        return {k: (list(s), list(v)) for k, (s, v) in e.series.items() if s}


def _to_matrix(raw: tuple[list[int], list[int], list[list[float | None]]]) -> Matrix:
    steps, js, rows = raw
    m = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float).reshape(len(steps), len(js))
    return np.asarray(steps, dtype=np.int64), np.asarray(js, dtype=np.int64), m


def _column_stride(m: Matrix) -> int:
    """Steps between a heatmap's columns (1 for a short run)."""
    steps = m[0]
    return max(1, int(steps[-2] - steps[-3])) if len(steps) >= 3 else 1


def stat_matrices(q: Any, run_id: int, stats: list[str], available: list[str], last_step: int
                  ) -> tuple[dict[str, int], dict[str, Matrix]]:
    """``({stat: version}, {stat: (steps, js, matrix)})``; stats the run never logged come back
    empty with version 0.

    The matrices are one snapshot: they are always re-read together, so every heatmap covers
    the same steps. (Re-reading a few per refresh left them at different steps until the cursor
    moved again, which on a finished run is never.) A snapshot counts as covering the last step
    it actually holds, not the cursor's: a step whose scalars landed in an earlier flush than
    its statistics is read again once they are stored."""
    e = _entry(run_id)
    with e.lock:
        have = set(available)
        want = [s for s in stats if s in have]
        now = time.monotonic()
        held = [e.mats[s] for s in want if s in e.mats]
        covered = max((int(m[0][-1]) for m in held if m[0].size), default=-1)
        stride = max((_column_stride(m) for m in held if m[0].size), default=1)
        age = now - min((e.mats_time[s] for s in want if s in e.mats_time), default=now)
        missing = any(s not in e.mats for s in want)
        stale = want and (missing or last_step < covered or last_step - covered >= stride
                          or (last_step != covered and age > STATS_MAX_AGE))
        if stale:
            for s in want:
                e.mats[s] = _to_matrix(q.step_stats_matrix(run_id, s, max_steps=HEATMAP_STEPS))
                e.mats_time[s] = now
                e.versions[s] = e.versions.get(s, 0) + 1
            e.reads["stats"] += 1
        empty: Matrix = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0)))
        return ({s: e.versions.get(s, 0) if s in have else 0 for s in stats},
                {s: e.mats.get(s, empty) if s in have else empty for s in stats})


def memo(run_id: int, key: tuple, make: Callable[[], Any], keep: int = 8) -> Any:
    """A value derived from this run's data, computed once per ``key``. ``key[0]`` names a
    namespace ("row", "summary", ...) holding at most ``keep`` values (oldest dropped first)."""
    e = _entry(run_id)
    with e.lock:
        space = e.memo.setdefault(key[0], OrderedDict())
        if key not in space:
            space[key] = make()
            while len(space) > keep:
                space.popitem(last=False)
        return space[key]

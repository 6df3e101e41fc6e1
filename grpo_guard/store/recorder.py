"""The store-backed ``Recorder`` and ``Control`` the worker hands to the trainer.

``StoreRecorder`` buffers rows in memory, keyed by their natural keys (a value logged twice
for the same key keeps the last one), and writes them in ONE transaction per flush: from a
background thread every ``flush_interval`` seconds (or sooner when the buffer fills), and
synchronously on ``flush()``, ``log_checkpoint`` (so a checkpoint is never recorded ahead of the
history it covers), ``prune_after`` and ``close()``. Writes are upserts on the natural keys, so a
replayed step or a retried batch neither duplicates nor loses rows. Every flush also stamps the
run's heartbeat; with a ``lease`` the flush is fenced: once a sweep has taken the run away, the
flush writes nothing and the next call from the trainer raises ``LeaseLostError``.

``StoreControl`` reads the run's flags with one primary-key read per ``stop_requested`` (the
trainer's once-per-step poll); ``take_*`` reuse that read for ``min_interval`` seconds and clear
a flag with a conditional update.

NaN and infinities: scalars keep them explicitly (``special``); per-step statistics and scores
store them as NULL. Imports no torch.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update

from grpo_guard.store import artifacts
from grpo_guard.store.db import (
    RunNotFoundError,
    StoreUnavailableError,
    bulk_upsert,
    database_url,
    session_scope,
    upsert,
    utcnow,
)
from grpo_guard.store.lifecycle import LeaseLostError
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
from grpo_guard.training.recording import Sample, StepStat

log = logging.getLogger("grpo_guard.store.recorder")
_LEVELS = ("debug", "info", "warning", "error", "critical")
# Rows of the two high-volume tables travel as tuples in these column orders (``bulk_upsert``).
SCALAR_COLUMNS = ("run_id", "key", "step", "value", "special")
STAT_COLUMNS = ("run_id", "step", "denoise_index", "sigma", "dt", "extra", *STEP_STAT_COLUMNS)
_STAT_INDEX = {name: i for i, name in enumerate(STAT_COLUMNS) if i >= 6}
_STAT_SKIP = frozenset(("sigma", "dt", "dt_abs"))  # schedule constants: own columns already


def _finite(v: Any) -> float | None:
    """A finite float, or None (NaN, inf, None, not a number)."""
    if v.__class__ is float:
        return v if v - v == 0.0 else None  # inf - inf and nan - nan are nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _encode_scalar(v: Any) -> tuple[float | None, int]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None, 1
    if math.isfinite(f):
        return f, 0
    if math.isnan(f):
        return None, 1
    return None, 2 if f > 0 else 3


def _json_clean(v: Any) -> Any:
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return _finite(v)
    if isinstance(v, dict):
        return {str(k): _json_clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_clean(x) for x in v]
    if v is None or isinstance(v, str | bool):
        return v
    return _finite(v) if hasattr(v, "__float__") else str(v)


class _Buffer:
    """Rows waiting for the next flush, keyed by natural key."""

    def __init__(self) -> None:
        self.scalars: dict[tuple[int, str], tuple] = {}
        self.stats: dict[tuple[int, int], list] = {}
        self.samples: dict[tuple[int, str, int], dict[str, Any]] = {}
        self.ckpts: dict[int, dict[str, Any]] = {}
        self.lines: list[dict[str, Any]] = []
        self.keys: set[tuple[str, str]] = set()
        self.progress: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.scalars) + len(self.stats) + len(self.samples) + len(self.ckpts) + len(self.lines)

    def pending(self) -> bool:
        return bool(len(self) or self.keys or self.progress)

    def absorb_older(self, older: _Buffer) -> None:
        """Put back a batch that failed to write, under anything logged since."""
        self.scalars = {**older.scalars, **self.scalars}
        self.stats = {**older.stats, **self.stats}
        self.samples = {**older.samples, **self.samples}
        self.ckpts = {**older.ckpts, **self.ckpts}
        self.lines = older.lines + self.lines
        self.keys |= older.keys
        self.progress = self.progress or older.progress

    def drop_after(self, step: int) -> None:
        self.scalars = {k: v for k, v in self.scalars.items() if k[0] <= step}
        self.stats = {k: v for k, v in self.stats.items() if k[0] <= step}
        self.samples = {k: v for k, v in self.samples.items() if k[0] <= step}
        self.ckpts = {k: v for k, v in self.ckpts.items() if k <= step}

    def max_step(self) -> int | None:
        steps = [k[0] for k in self.scalars] + [k[0] for k in self.stats] + [k[0] for k in self.samples]
        steps += list(self.ckpts)
        return max(steps) if steps else None


class StoreRecorder:
    """``Recorder`` writing to the store for run ``run_id`` (see the module docstring).

    Args:
        run_id (`int`): the run's id.
        lease (`str`, *optional*): the worker's lease from ``claim_run``; fences every write.
        attempt (`int`, defaults to 1): stamped on log lines.
        url (`str`, *optional*): database URL (default ``database_url()`` at construction).
        flush_interval (`float`, defaults to 0.5): seconds between background flushes.
        heartbeat_interval (`float`, defaults to 5.0): the longest time between two writes.
        max_buffer (`int`, defaults to 5000): rows that wake the flusher early; ten times as
            many make the logging call flush synchronously (back-pressure).
        retry_for (`float`, defaults to 60.0): how long a synchronous flush retries a database
            that is unavailable before raising ``StoreUnavailableError``.
        background (`bool`, defaults to True): run the flusher thread.
    """

    def __init__(self, run_id: int, *, lease: str | None = None, attempt: int = 1, url: str | None = None,
                 flush_interval: float = 0.5, heartbeat_interval: float = 5.0, max_buffer: int = 5000,
                 retry_for: float = 60.0, background: bool = True) -> None:
        self.run_id = int(run_id)
        self.lease = lease
        self.attempt = int(attempt)
        self.url = url or database_url()
        self.flush_interval = float(flush_interval)
        self.heartbeat_interval = float(heartbeat_interval)
        self.max_buffer = int(max_buffer)
        self.retry_for = float(retry_for)
        self.flushes = 0  # transactions committed (for tests and benchmarks)
        self._buf = _Buffer()
        self._known_keys: set[tuple[str, str]] = set()
        self._seen_stats: set[str] = set()
        self._lock = threading.Lock()  # guards _buf
        self._flush_lock = threading.RLock()  # one flush at a time
        self._failure: BaseException | None = None  # fatal error seen by the background flusher
        self._last_write = 0.0
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name=f"gg-recorder-{self.run_id}", daemon=True)
            self._thread.start()

    # ---- Recorder protocol --------------------------------------------------------------------
    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        self._check()
        step, rid = int(step), self.run_id
        with self._lock:
            for k, v in values.items():
                key = str(k)
                value, special = _encode_scalar(v)
                self._buf.scalars[(step, key)] = (rid, key, step, value, special)
                self._note_key("scalar", key)
        self._after_add()

    def log_step_stats(self, rows: list[StepStat]) -> None:
        self._check()
        rid, template, index, seen = self.run_id, [None] * len(STAT_COLUMNS), _STAT_INDEX, self._seen_stats
        with self._lock:
            for r in rows:
                row = template.copy()
                step, j = int(r.step), int(r.denoise_index)
                row[0], row[1], row[2], row[3], row[4] = rid, step, j, _finite(r.sigma), _finite(r.dt)
                stats = r.stats
                if not stats.keys() <= seen:
                    self._note_stat_keys(stats)
                extra = None
                for k, v in stats.items():
                    i = index.get(k)
                    if i is not None:
                        row[i] = _finite(v)
                    elif k not in _STAT_SKIP:
                        if extra is None:
                            extra = {}
                        extra[str(k)] = _json_clean(v)
                if extra:
                    row[5] = json.dumps(extra, sort_keys=True)
                self._buf.stats[(step, j)] = row
        self._after_add()

    def log_sample(self, sample: Sample) -> None:
        self._check()
        step, seed = int(sample.step), int(sample.seed)
        location = artifacts.sample_location(self.run_id, step, sample.prompt, seed)
        artifacts.put_bytes(location, sample.image, what=f"the eval image of step {step}")
        row = {"run_id": self.run_id, "step": step, "prompt": str(sample.prompt), "seed": seed,
               "image_location": location, "proxy": _finite(sample.proxy) if sample.proxy is not None else None,
               "gold": _finite(sample.gold) if sample.gold is not None else None,
               "scores": json.dumps(_json_clean(dict(sample.scores)), sort_keys=True),
               "prompt_meta": json.dumps(dict(sample.prompt_meta), sort_keys=True)}
        with self._lock:
            self._buf.samples[(step, sample.prompt, seed)] = row
        self._after_add()

    def log_checkpoint(self, step: int, path: str, meta: dict[str, Any] | None = None) -> None:
        self._check()
        try:
            location = artifacts.to_location(path)
        except ValueError:
            raise ValueError(f"checkpoint {path} is outside the artifact root; write checkpoints under "
                             f"recorder.checkpoint_dir() ({self.checkpoint_dir()})") from None
        with self._lock:
            self._buf.ckpts[int(step)] = {"run_id": self.run_id, "step": int(step), "location": location,
                                          "meta": json.dumps(_json_clean(dict(meta or {})), sort_keys=True),
                                          "created_at": utcnow()}
        self.flush()  # durable together with every row logged before it

    def log_line(self, message: str, level: str = "info") -> None:
        level = level.lower() if isinstance(level, str) and level.lower() in _LEVELS else "info"
        log.log(logging.getLevelName(level.upper()), "run %s: %s", self.run_id, message)
        with self._lock:
            self._buf.lines.append({"run_id": self.run_id, "attempt": self.attempt, "created_at": utcnow(),
                                    "level": level, "message": str(message)[:20000]})
        self._after_add()

    def set_progress(self, step: int, total: int) -> None:
        with self._lock:
            self._buf.progress = (int(step), int(total))

    def prune_after(self, step: int) -> None:
        """Resume from ``step``: delete every scalar, statistic, sample and checkpoint row with
        a larger step (and the pruned samples' images) before anything new is written."""
        self._check()
        step = int(step)
        with self._flush_lock:
            with self._lock:
                self._buf.drop_after(step)
            self.flush()
            locations = self._retrying(lambda: self._prune(step))
        for loc in locations:
            artifacts.delete(loc)

    def checkpoint_dir(self) -> str:
        return artifacts.ensure_dir(artifacts.checkpoint_location(self.run_id), what="checkpoints")

    def flush(self) -> None:
        """Write everything buffered now (one transaction); retry an unavailable database for
        up to ``retry_for`` seconds."""
        self._check()
        self._retrying(self._flush_once)

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the flusher and write what is left (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._failure is None:
            self._retrying(self._flush_once)

    def __enter__(self) -> StoreRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- internals ------------------------------------------------------------------------------
    def _note_stat_keys(self, stats: dict[str, Any]) -> None:
        """Register a statistic's name the first time it is seen (plottable ones only)."""
        self._note_key("step_stat", "sigma")
        self._note_key("step_stat", "dt")
        for k, v in stats.items():
            if k in _STAT_INDEX or (k not in _STAT_SKIP and isinstance(v, float | int) and not isinstance(v, bool)):
                self._note_key("step_stat", str(k))
        self._seen_stats.update(stats.keys())

    def _note_key(self, kind: str, key: str) -> None:
        if (kind, key) not in self._known_keys:
            self._known_keys.add((kind, key))
            self._buf.keys.add((kind, key))

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _after_add(self) -> None:
        n = len(self._buf)
        if n >= 10 * self.max_buffer:
            self.flush()
        elif n >= self.max_buffer:
            self._wake.set()

    def _retrying(self, fn: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        delay = 0.1
        while True:
            try:
                return fn()
            except StoreUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                log.warning("run %s: database unavailable; retrying in %.1fs", self.run_id, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except LeaseLostError as e:
                self._failure = e
                raise

    def _loop(self) -> None:
        delay = self.flush_interval
        while not self._stop.is_set():
            self._wake.wait(timeout=delay)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                pending = self._buf.pending()
            if not pending and time.monotonic() - self._last_write < self.heartbeat_interval:
                continue
            try:
                self._flush_once()
                delay = self.flush_interval
            except StoreUnavailableError as e:
                delay = min(max(delay, 0.25) * 2, 5.0)
                log.warning("run %s: flush failed (%s); retrying in %.1fs", self.run_id, e, delay)
            except BaseException as e:  # lease lost, or a row the database refuses: stop
                self._failure = e
                log.error("run %s: recorder stopped: %s", self.run_id, e)
                return

    def _flush_once(self) -> None:
        with self._flush_lock:
            with self._lock:
                batch, self._buf = self._buf, _Buffer()
            try:
                self._write(batch)
            except BaseException:
                with self._lock:
                    self._buf.absorb_older(batch)
                raise
            self._last_write = time.monotonic()
            self.flushes += 1

    def _fence(self, s: Any, **values: Any) -> None:
        cond = [Run.id == self.run_id]
        if self.lease is not None:
            cond.append(Run.lease == self.lease)
        if not s.execute(update(Run).where(*cond).values(**values)).rowcount:
            if self.lease is not None:
                raise LeaseLostError(f"run {self.run_id}: this worker no longer holds the run "
                                     "(it was declared lost and taken over); stopping without writing")
            raise RunNotFoundError(f"no run with id {self.run_id} (deleted while recording?)")

    def _write(self, b: _Buffer) -> None:
        now = utcnow()
        values: dict[str, Any] = {"heartbeat_at": now, "updated_at": now}
        if b.progress is not None:
            values["step"], values["total"] = b.progress
        top = b.max_step()
        if top is not None:
            values["last_step"] = case((Run.last_step < top, top), else_=Run.last_step)
        with session_scope(write=True, url=self.url) as s:
            self._fence(s, **values)
            if b.keys:
                upsert(s, RunKey.__table__, [{"run_id": self.run_id, "kind": k, "key": key} for k, key in sorted(b.keys)],
                       ("run_id", "kind", "key"), update=())
            # in primary-key order: cheaper index inserts, and on PostgreSQL each key's points land
            # together on a few heap pages instead of on every page of the batch
            scalars = sorted(b.scalars.values(), key=lambda r: (r[1], r[2]))
            bulk_upsert(s, Scalar.__table__, SCALAR_COLUMNS, scalars, ("run_id", "key", "step"))
            stats = sorted(b.stats.values(), key=lambda r: (r[1], r[2]))
            bulk_upsert(s, StepStatRow.__table__, STAT_COLUMNS, stats, ("run_id", "step", "denoise_index"))
            upsert(s, EvalSample.__table__, list(b.samples.values()), ("run_id", "step", "prompt", "seed"))
            upsert(s, Checkpoint.__table__, list(b.ckpts.values()), ("run_id", "step"))
            if b.lines:
                s.execute(insert(LogLine.__table__), b.lines)
            if b.samples:
                self._update_latest_eval(s, max(k[0] for k in b.samples))

    def _update_latest_eval(self, s: Any, step: int | None) -> None:
        """Latest proxy / gold on the runs row: means over the samples of eval step ``step``."""
        if step is None:
            s.execute(update(Run).where(Run.id == self.run_id).values(last_proxy=None, last_gold=None, last_eval_step=None))
            return
        at = (EvalSample.run_id == self.run_id, EvalSample.step == step)
        s.execute(update(Run).where(Run.id == self.run_id, (Run.last_eval_step.is_(None)) | (Run.last_eval_step <= step))
                  .values(last_eval_step=step,
                          last_proxy=select(func.avg(EvalSample.proxy)).where(*at).scalar_subquery(),
                          last_gold=select(func.avg(EvalSample.gold)).where(*at).scalar_subquery()))

    def _prune(self, step: int) -> list[str]:
        with session_scope(write=True, url=self.url) as s:
            self._fence(s, last_step=case((Run.last_step > step, step), else_=Run.last_step),
                        heartbeat_at=utcnow(), last_eval_step=None, last_proxy=None, last_gold=None)
            after = EvalSample.run_id == self.run_id, EvalSample.step > step
            locations = list(s.scalars(select(EvalSample.image_location).where(*after)))
            removed = 0
            for model in (Scalar, StepStatRow, EvalSample, Checkpoint):
                removed += s.execute(delete(model).where(model.run_id == self.run_id, model.step > step)).rowcount
            latest = s.scalar(select(func.max(EvalSample.step)).where(EvalSample.run_id == self.run_id))
            self._update_latest_eval(s, latest)
            if removed:
                s.add(LogLine(run_id=self.run_id, attempt=self.attempt, created_at=utcnow(), level="info",
                              message=f"resuming after step {step}: {removed} rows of later steps removed"))
        return locations


class StoreControl:
    """``Control`` backed by the run's row: the flags the UI/CLI set (``request_stop`` ...)."""

    def __init__(self, run_id: int, *, lease: str | None = None, url: str | None = None,
                 min_interval: float = 0.1) -> None:
        self.run_id = int(run_id)
        self.lease = lease
        self.url = url or database_url()
        self.min_interval = float(min_interval)
        self._row: Any = None
        self._at = 0.0

    def _read(self, fresh: bool = False) -> Any:
        if not fresh and self._row is not None and time.monotonic() - self._at < self.min_interval:
            return self._row
        try:
            with session_scope(url=self.url) as s:
                row = s.execute(select(Run.stop_requested, Run.sample_now, Run.save_now, Run.status, Run.lease)
                                .where(Run.id == self.run_id)).first()
        except StoreUnavailableError:
            return self._row  # a database blip must not stop training; poll again next step
        if row is None:
            raise RunNotFoundError(f"no run with id {self.run_id} (deleted while running?)")
        if self.lease is not None and row.lease != self.lease:
            raise LeaseLostError(f"run {self.run_id}: this worker no longer holds the run; stopping")
        self._row, self._at = row, time.monotonic()
        return row

    def stop_requested(self) -> bool:
        row = self._read(fresh=True)  # always current: a stop takes effect at the next step
        return bool(row is not None and (row.stop_requested or row.status in ("stopping", "cancelled")))

    def _take(self, flag: str) -> bool:
        row = self._read()
        if row is None or not getattr(row, flag):
            return False
        cond = [Run.id == self.run_id, getattr(Run, flag).is_(True)]
        if self.lease is not None:
            cond.append(Run.lease == self.lease)
        try:
            with session_scope(write=True, url=self.url) as s:
                taken = bool(s.execute(update(Run).where(*cond).values(**{flag: False})).rowcount)
        except StoreUnavailableError:
            return False
        self._row = None  # re-read next time
        return taken

    def take_sample_now(self) -> bool:
        return self._take("sample_now")

    def take_save_now(self) -> bool:
        return self._take("save_now")

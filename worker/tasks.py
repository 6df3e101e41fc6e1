"""The task that delivers a run to the trainer: ``worker.tasks.train_run(run_id)``.

Imported only in worker processes. Nothing heavy at import (no torch, no CUDA: prefork children
are forked after import, STACK.md C7); the trainer is imported inside the task body.

The task takes only the id and checks the world itself (STYLE.md §5): it claims the run only
if it is still ``queued`` (a cancelled run, or a second delivery of the same message, exits
quietly), loads the stored config, prunes rows past the last checkpoint and resumes from it,
runs the trainer with the store-backed Recorder and Control, and ends the attempt
``succeeded``, ``cancelled`` or ``failed`` (message and traceback stored). A worker that lost
its lease (a sweep declared it dead) stops without touching the row.

Which trainer runs: ``TRAIN_FN`` if a test set it, else ``GG_TRAINER=module:function`` if an
operator set it, else ``grpo_guard.trainer.train``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery import shared_task

from grpo_guard.store import lifecycle
from grpo_guard.store.artifacts import resolve
from grpo_guard.store.db import StoreUnavailableError
from grpo_guard.store.lifecycle import LeaseLostError
from grpo_guard.store.recorder import StoreControl, StoreRecorder
from worker import recovery  # noqa: F401  (connects the worker_ready sweep)
from worker.celery_app import TASK_NAME

log = logging.getLogger("worker.tasks")

TRAIN_FN: Callable[..., Any] | None = None  # test hook: a train(config, recorder, control, ...) double


class RunSetupError(RuntimeError):
    """The run cannot start (bad stored config, missing checkpoint); the message says why."""


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def resolve_train_fn() -> Callable[..., Any]:
    if TRAIN_FN is not None:
        return TRAIN_FN
    spec = os.environ.get("GG_TRAINER", "").strip()
    if spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr or "train")
    from grpo_guard.trainer import train

    return train


@shared_task(name=TASK_NAME, bind=True, ignore_result=True, acks_late=True)
def train_run(self: Any, run_id: int) -> str:
    """Run ``run_id`` to its end. Returns what happened: succeeded | cancelled | failed |
    skipped (not queued) | lease-lost."""
    return execute_run(int(run_id), task_id=getattr(self.request, "id", None))


def execute_run(run_id: int, *, task_id: str | None = None) -> str:
    """The body of ``train_run``, callable without Celery."""
    host = os.environ.get("GG_WORKER_NAME") or socket.gethostname()
    gpu = os.environ.get("GG_WORKER_GPU") or None

    # 1. Claim: only a queued run, with a fresh lease.
    claim = lifecycle.claim_run(run_id, worker_host=host, worker_gpu=gpu, task_id=task_id)
    if claim is None:
        log.info("run %s is not queued (cancelled, deleted or taken by another delivery): skipping", run_id)
        return "skipped"

    recorder = StoreRecorder(run_id, lease=claim.lease, attempt=claim.attempt,
                             flush_interval=_env_float("GG_FLUSH_SECONDS", 0.5),
                             heartbeat_interval=_env_float("GG_HEARTBEAT_SECONDS", 5.0))
    control = StoreControl(run_id, lease=claim.lease)
    try:
        # 2. The stored config, 3. the resume point, 4. the trainer.
        config = _load_config(run_id)
        resume_from = _resume_point(run_id, claim.attempt, recorder)
        train = resolve_train_fn()
        result = train(config, recorder, control, resume_from=resume_from, device="cuda" if gpu else None)
        status = getattr(result, "status", None)
        if status not in ("succeeded", "cancelled"):
            raise RuntimeError(f"the trainer returned status {status!r}; expected 'succeeded' or 'cancelled'")
        recorder.close()
        _finish(run_id, claim.lease, status)
        return status
    except LeaseLostError as e:
        log.warning("run %s: %s", run_id, e)
        return "lease-lost"
    except Exception as e:
        message = _describe(e)
        tb = traceback.format_exc()
        log.error("run %s failed: %s", run_id, message)
        try:
            recorder.log_line(f"failed: {message}", "error")
            recorder.close()
        except Exception as close_error:  # the store itself may be what failed
            log.warning("run %s: could not flush the last rows: %s", run_id, close_error)
        _finish(run_id, claim.lease, "failed", error=message, tb=tb)
        return "failed"
    except BaseException as e:  # SystemExit / KeyboardInterrupt: the worker is being shut down
        message = f"the worker was shut down while the run was going ({type(e).__name__}); resume it to continue"
        try:
            recorder.close()
            _finish(run_id, claim.lease, "failed", error=message, tb=traceback.format_exc())
        except BaseException:
            pass  # the stale-heartbeat sweep will recover it
        raise


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, RunSetupError) or not text:
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}"


def _finish(run_id: int, lease: str, status: str, *, error: str | None = None, tb: str | None = None) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if not lifecycle.finish_run(run_id, lease, status, error=error, traceback=tb):
                log.warning("run %s: lease lost before the end could be recorded", run_id)
            return
        except StoreUnavailableError as e:
            if time.monotonic() > deadline:
                log.error("run %s: could not record its end (%s); the sweep will recover it", run_id, e)
                return
            time.sleep(1.0)


def _load_config(run_id: int) -> Any:
    from grpo_guard.config import ConfigError, RunConfig

    stored = lifecycle.stored_config(run_id)
    if stored is None:
        raise RunSetupError(f"run {run_id} no longer exists")
    text = stored[0]
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as e:
        raise RunSetupError(f"the stored config of run {run_id} is not valid JSON ({e}); "
                            "submit a new run from a valid config") from None
    if not isinstance(data, dict):
        raise RunSetupError(f"the stored config of run {run_id} is a JSON {type(data).__name__}, not a mapping")
    try:
        return RunConfig.from_dict(data)
    except ConfigError as e:
        fields = "; ".join(f"{f or '(config)'}: {m}" for f, m in e.errors)
        raise RunSetupError(f"the stored config of run {run_id} is invalid: {fields}") from None


def _resume_point(run_id: int, attempt: int, recorder: Any) -> str | None:
    """The checkpoint to resume from (rows after its step are pruned first), or None to start
    from scratch (a retry without any checkpoint drops the rows of earlier attempts)."""
    latest = lifecycle.latest_checkpoint(run_id)
    if latest is None:
        if attempt > 1:
            recorder.prune_after(-1)
        return None
    step, location = latest
    try:
        path = resolve(location)
    except ValueError as e:
        raise RunSetupError(f"cannot resume run {run_id}: checkpoint location {location!r} is invalid ({e})") from None
    if not os.path.exists(path):
        raise RunSetupError(f"cannot resume run {run_id}: its last checkpoint (step {step}) is missing at {path}. "
                            "Restore the file and resume, or clone the run to start over; stored rows are kept.")
    recorder.prune_after(step)
    recorder.log_line(f"attempt {attempt}: resuming from the checkpoint of step {step}")
    return path

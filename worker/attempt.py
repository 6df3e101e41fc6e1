"""One attempt of a run, the parts every way of running one shares (a one-node run in
``worker.tasks``, a gang's node 0 in ``worker.gang``): the stored config read and validated as
at every way in, the checkpoint to resume from, the attempt's end recorded, and the errors that
say in one sentence why a run cannot start."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from grpo_guard.store import lifecycle
from grpo_guard.store.artifacts import resolve
from grpo_guard.store.db import StoreUnavailableError

log = logging.getLogger("worker.tasks")


class RunSetupError(RuntimeError):
    """The run cannot start (bad stored config, missing checkpoint); the message says why."""


class RankFailure(RunSetupError):
    """A rank of a multi-GPU run failed; carries that rank's traceback (stored with the run)."""

    def __init__(self, message: str, rank_traceback: str | None = None) -> None:
        super().__init__(message)
        self.rank_traceback = rank_traceback


def env_float(name: str, default: float) -> float:
    """A float setting from the environment; the default when unset or not a number."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def describe(e: BaseException) -> str:
    """The message stored with a failed run: a setup error's own sentence, else the exception's type and text."""
    text = str(e).strip()
    if isinstance(e, RunSetupError) or getattr(e, "plain_message", False) or not text:
        return text or type(e).__name__
    return f"{type(e).__name__}: {text}"


def finish(run_id: int, lease: str, status: str, *, error: str | None = None, tb: str | None = None) -> None:
    """Record the attempt's end, retrying for up to 2 minutes while the store is unreachable (the
    stale-heartbeat sweep recovers the run after that)."""
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


def load_config(run_id: int) -> Any:
    """The run's stored config, validated as at every way in, prompt files inlined; RunSetupError
    says in one sentence what is wrong."""
    from grpo_guard.config import ConfigError
    from grpo_guard.config.validation import validate_run_config

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
        # the same validation as every way in, with this worker's roots (GG_PROMPTS_DIR and the
        # built-in sets; a stored config has no directory); prompt files are read here, confined
        return validate_run_config(data, check_paths=True).with_prompt_files_inlined()
    except ConfigError as e:
        fields = "; ".join(f"{f or '(config)'}: {m}" for f, m in e.errors)
        raise RunSetupError(f"the stored config of run {run_id} is invalid: {fields}") from None


def resume_point(run_id: int, attempt: int, recorder: Any) -> str | None:
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

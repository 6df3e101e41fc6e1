"""The task that delivers a run to the trainer: ``worker.tasks.train_run(run_id)``.

Imported only in worker processes. Nothing heavy at import (no torch, no CUDA: prefork children
are forked after import, STACK.md C7); the trainer is imported inside the task body.

The task takes only the id and checks the world itself (STYLE.md §5): it claims the run only
if it is still ``queued`` (a cancelled run, or a second delivery of the same message, exits
quietly), loads the stored config, prunes rows past the last checkpoint and resumes from it,
runs the trainer with the store-backed Recorder and Control, and ends the attempt
``succeeded``, ``cancelled`` or ``failed`` (message and traceback stored). A worker that lost
its lease (a sweep declared it dead) stops without touching the row.

Shutdown (Ctrl-C or SIGTERM on ``grpo-guard serve`` / ``worker``, or on the Celery worker itself):
the worker's main process starts Celery's warm shutdown and sends SIGINT to its pool children
(``worker_shutting_down`` below). In the child running a run, SIGINT or SIGTERM only set a flag
that the trainer checks between the stages of an epoch (``grpo_guard.training.interrupt``): it
checkpoints at once and the run ends ``interrupted``, which the next worker's sweep requeues at
once. A multi-GPU run's ranks learn of it from a file (``worker.ranks``), stop together at the
next point where they can, and end it ``interrupted`` the same way. A second SIGTERM, or either
signal in an idle child, acts as before (exit; a multi-GPU run's ranks are terminated).

Which trainer runs: ``TRAIN_FN`` if a test set it, else ``GG_TRAINER=module:function`` if an
operator set it, else ``grpo_guard.training.trainer.train``.

A run with ``num_gpus`` > 1 needs a worker that owns that many GPUs (``grpo-guard worker --gpus
0+1``: one worker, ``CUDA_VISIBLE_DEVICES=0,1``, ``GG_WORKER_GPU=0,1``). The task then starts
``accelerate launch`` on the first ``num_gpus`` of them, running ``worker.ranks`` (rank 0 records
to the store under this task's lease), waits for it, and ends the attempt from the ranks' result
files. A worker with too few GPUs fails the run with a message saying how to start one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_shutdown, worker_shutting_down

from grpo_guard.quiet import silence_library_noise
from grpo_guard.store import lifecycle
from grpo_guard.store.artifacts import resolve
from grpo_guard.store.db import StoreUnavailableError
from grpo_guard.store.lifecycle import LeaseLostError
from grpo_guard.store.recorder import StoreControl, StoreRecorder
from worker import recovery  # noqa: F401  (connects the worker_ready sweep)
from worker.celery_app import EVAL_TASK_NAME, TASK_NAME

silence_library_noise()  # this process is started by celery, not by the grpo-guard CLI

log = logging.getLogger("worker.tasks")

TRAIN_FN: Callable[..., Any] | None = None  # test hook: a train(config, recorder, control, ...) double
# test hook: runs a multi-GPU launch command (argv, env) and returns its exit code
LAUNCH_FN: Callable[[list[str], dict[str, str]], int] | None = None


class RunSetupError(RuntimeError):
    """The run cannot start (bad stored config, missing checkpoint); the message says why."""


class RankFailure(RunSetupError):
    """A rank of a multi-GPU run failed; carries that rank's traceback (stored with the run)."""

    def __init__(self, message: str, rank_traceback: str | None = None) -> None:
        super().__init__(message)
        self.rank_traceback = rank_traceback


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


PRELOAD_MODULES = ("grpo_guard.training.trainer", "grpo_guard.models.toy")
_preload: threading.Thread | None = None


def _import_preload() -> None:
    for name in PRELOAD_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # the run itself will import it again and report the error
            log.warning("preloading %s failed: %s", name, e)
            return


@worker_process_init.connect
def preload_trainer(**_: Any) -> None:
    """With GG_WORKER_PRELOAD=1 (``grpo-guard serve``'s embedded workers), a fresh worker child
    imports torch, diffusers and the trainer at once, so a run clicked in the UI does not wait
    for them (6-15 s on a busy CPU). In a thread: Celery gives a child 4 s to report ready;
    :func:`resolve_train_fn` waits for it, so no two threads import the same modules."""
    global _preload
    if os.environ.get("GG_WORKER_PRELOAD") != "1" or os.environ.get("GG_TRAINER", "").strip():
        return
    if _main_shutting_down:  # a replacement child forked during shutdown: it will never run a run
        return
    _preload = threading.Thread(target=_import_preload, name="gg-preload", daemon=True)
    _preload.start()


# ---- shutdown: checkpoint and hand the run back ------------------------------------------------
_interrupt = threading.Event()  # this process is being shut down
_running = threading.Event()    # a run is in progress in this process
_launched: subprocess.Popen | None = None  # the accelerate launcher of a multi-GPU run, if any
_stop_file: str | None = None  # the file that asks that run's ranks to stop (worker.ranks.stop_file)
_main_shutting_down = False  # set in the main process at shutdown; children forked after inherit it


def _on_shutdown_signal(signum: int, _frame: Any) -> None:
    """In a pool child: the first SIGINT/SIGTERM during a run asks the trainer to checkpoint and
    stop; a second SIGTERM, or one while idle, ends the process as the default would."""
    if not _running.is_set() or (signum == signal.SIGTERM and _interrupt.is_set()):
        if signum == signal.SIGINT:
            return  # Celery's children ignore SIGINT; an idle child has nothing to save
        if _launched is not None:  # not leaving the ranks behind: they end ``failed`` (resumable)
            with contextlib.suppress(OSError):
                os.killpg(_launched.pid, signal.SIGTERM)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not _interrupt.is_set():
        log.warning("shutdown requested: the run checkpoints and stops as soon as its state allows")
    _interrupt.set()
    if _stop_file is not None:  # a multi-GPU run: its ranks see the file and stop together
        with contextlib.suppress(OSError), open(_stop_file, "a", encoding="utf-8"):
            pass
    elif _launched is not None:  # a launch that names no stop file: end its group as before
        with contextlib.suppress(OSError):
            os.killpg(_launched.pid, signal.SIGTERM)


@contextlib.contextmanager
def _shutdown_handlers() -> Any:
    """SIGINT/SIGTERM handlers for the duration of a run (installed here, in the task, because
    billiard resets both after ``worker_process_init``); only in a main thread (not in the test
    thread-pool worker)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_shutdown_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@worker_shutting_down.connect
def interrupt_children(**_: Any) -> None:
    """In the worker's main process, on a warm or cold shutdown: tell every pool child (the one
    running a run checkpoints and stops; idle ones ignore it). Celery's prefork children ignore
    SIGINT by default and do not get the main process's SIGTERM, so without this a run would
    only learn of the shutdown when it is killed."""
    from billiard.process import active_children

    global _main_shutting_down
    _main_shutting_down = True
    for child in active_children():
        with contextlib.suppress(OSError, AttributeError, TypeError):
            os.kill(child.pid, signal.SIGINT)


@worker_shutdown.connect
def exit_without_pool_finalizers(**_: Any) -> None:
    """A worker process started by ``grpo-guard`` (GG_SUPERVISED=1) leaves at once when Celery has
    finished its shutdown: billiard's exit-time pool finalizer was seen to block forever on the
    queue lock of a child that had ended after a run (the trainer had long recorded the run)."""
    if os.environ.get("GG_SUPERVISED") != "1":
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


class ShutdownAwareControl:
    """The run's ``StoreControl`` plus ``interrupted()``: this process is being shut down (a local
    flag, no database read). ``user_stop`` remembers whether the user asked for the stop too."""

    def __init__(self, inner: StoreControl) -> None:
        self.inner = inner
        self.user_stop = False

    def stop_requested(self) -> bool:
        self.user_stop = self.inner.stop_requested()
        return self.user_stop or _interrupt.is_set()

    def interrupted(self) -> bool:
        return _interrupt.is_set()

    def take_sample_now(self) -> bool:
        return self.inner.take_sample_now()

    def take_save_now(self) -> bool:
        return self.inner.take_save_now()


def resolve_train_fn() -> Callable[..., Any]:
    if _preload is not None:
        _preload.join()
    if TRAIN_FN is not None:
        return TRAIN_FN
    spec = os.environ.get("GG_TRAINER", "").strip()
    if spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr or "train")
    from grpo_guard.training.trainer import train

    return train


@shared_task(name=TASK_NAME, bind=True, ignore_result=True, acks_late=True)
def train_run(self: Any, run_id: int, gang: str | None = None) -> str:
    """Run ``run_id`` to its end. Returns what happened: succeeded | cancelled | failed |
    interrupted (the worker is shutting down) | skipped (not queued) | lease-lost; a multi-node
    run's gang member (``gang``: the formation a join message is for) see ``worker.gang``."""
    with _shutdown_handlers():
        return execute_run(int(run_id), task_id=getattr(self.request, "id", None), gang=gang)


@shared_task(name=EVAL_TASK_NAME, bind=True, ignore_result=True, acks_late=True)
def evaluate_model(self: Any, evaluation_id: int) -> str:
    """Run a queued benchmark evaluation (``grpo-guard eval --submit``, the Run page's Evaluate…).
    Returns succeeded | failed | skipped (not queued); a failure's reason is on its row."""
    from grpo_guard.evaluation.runner import execute_queued

    return execute_queued(int(evaluation_id), device=os.environ.get("GG_EVAL_DEVICE") or None)


def execute_run(run_id: int, *, task_id: str | None = None, gang: str | None = None) -> str:
    """The body of ``train_run``, callable without Celery."""
    from worker import gang as gangs  # a multi-node run is taken by a gang of workers

    if gang is not None or gangs.num_nodes_of(run_id) > 1:
        _running.set()
        try:
            return gangs.execute(run_id, task_id=task_id, gang=gang)
        finally:
            _running.clear()
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
    control = ShutdownAwareControl(StoreControl(run_id, lease=claim.lease))
    _running.set()
    try:
        # 2. The stored config, 3. the resume point, 4. the trainer.
        config = _load_config(run_id)
        resume_from = _resume_point(run_id, claim.attempt, recorder)
        result = None
        _refuse_if_it_cannot_fit(config, gpu)  # before any weights load
        if config.num_gpus > 1:
            status = _run_data_parallel(run_id, claim, config, resume_from)
            if status == "lease-lost":
                return status
        else:
            train = resolve_train_fn()
            result = train(config, recorder, control, resume_from=resume_from, device="cuda" if gpu else None)
            status = getattr(result, "status", None)
        if status not in ("succeeded", "cancelled", "interrupted"):
            raise RuntimeError(f"the trainer returned status {status!r}; expected 'succeeded' or 'cancelled'")
        recorder.close()
        if status == "interrupted" or (status == "cancelled" and result is not None and _interrupt.is_set()
                                       and not control.user_stop):  # (a multi-GPU run's rank 0 said which)
            # a shutdown, not the user's stop: hand the run back for the next worker
            if not lifecycle.interrupt_run(run_id, claim.lease, step=getattr(result, "step", None)):
                log.warning("run %s: lease lost before the interrupt could be recorded", run_id)
            log.warning("run %s: interrupted (checkpointed); it resumes when a worker starts", run_id)
            return "interrupted"
        _finish(run_id, claim.lease, status)
        return status
    except LeaseLostError as e:
        log.warning("run %s: %s", run_id, e)
        return "lease-lost"
    except Exception as e:
        message = _describe(e)
        tb = getattr(e, "rank_traceback", None) or traceback.format_exc()
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
    finally:
        _running.clear()


def _refuse_if_it_cannot_fit(config: Any, gpu: str | None) -> None:
    """RunSetupError, one sentence with the figures, when the run's memory plan does not fit this
    worker's GPU (``GG_GPU_MEMORY_GIB``, else the detected device; a CPU worker has none to fit)."""
    from grpo_guard.planning.runtime import refusal

    why = refusal(config, "cuda" if gpu else None)
    if why:
        raise RunSetupError(why)


def owned_gpus() -> list[str]:
    """The GPUs this worker owns (physical indices, or UUIDs where the scheduler set those):
    ``CUDA_VISIBLE_DEVICES``, which ``grpo-guard worker`` sets per worker, else ``GG_WORKER_GPU``;
    none for a CPU worker."""
    from grpo_guard.training.distributed import parse_gpu_ids

    return parse_gpu_ids(os.environ.get("CUDA_VISIBLE_DEVICES") or os.environ.get("GG_WORKER_GPU"))


def data_parallel_command(run_id: int, lease: str, attempt: int, num_gpus: int, result_path: str,
                          resume_from: str | None = None, *, port: int | None = None) -> list[str]:
    """The ``accelerate launch ... -m worker.ranks`` argv for a run on ``num_gpus`` of this worker's
    GPUs. Raises RunSetupError when the worker owns fewer."""
    from grpo_guard.training.distributed import free_port, launch_module_command

    gpus = owned_gpus()
    if len(gpus) < num_gpus:
        owned = ",".join(map(str, gpus)) or "none"
        raise RunSetupError(
            f"the run needs num_gpus={num_gpus} GPUs but this worker owns {len(gpus)} (GPUs: {owned}); start a "
            f"worker that owns {num_gpus}, e.g. `grpo-guard worker --gpus "
            f"{'+'.join(map(str, range(num_gpus)))}`, and resume the run, or lower num_gpus")
    args = ["worker.ranks", str(run_id), "--lease", lease, "--attempt", str(attempt), "--result", result_path]
    if resume_from:
        args += ["--resume", resume_from]
    return launch_module_command(args, num_gpus, gpus[:num_gpus], main_process_port=port or free_port())


def _run_data_parallel(run_id: int, claim: Any, config: Any, resume_from: str | None) -> str:
    """Launch the ranks, wait, and return rank 0's status (or raise with the first failure):
    ``interrupted`` where this worker's shutdown stopped them (the ranks checkpointed)."""
    with tempfile.TemporaryDirectory(prefix=f"gg-run{run_id}-") as tmp:
        result = os.path.join(tmp, "result")
        cmd = data_parallel_command(run_id, claim.lease, claim.attempt, config.num_gpus, result, resume_from)
        log.info("run %s: launching %d ranks: %s", run_id, config.num_gpus, " ".join(cmd))
        from grpo_guard.training.cpu import training_env

        env = training_env()  # the ranks' OpenMP defaults (the user's own settings kept)
        with stopped_by_file(result):
            if _interrupt.is_set():  # shut down before the launch: nothing ran, the checkpoint stands
                return "interrupted"
            rc = (LAUNCH_FN or _launch)(cmd, env)
        results = {}
        for rank in range(config.num_gpus):
            try:
                with open(f"{result}.{rank}", encoding="utf-8") as fh:
                    results[rank] = json.load(fh)
            except (OSError, ValueError):
                continue
    first = results.get(0) or {}
    if first.get("status") == "lease-lost":
        return "lease-lost"
    if first.get("status") in ("succeeded", "cancelled") and rc == 0:
        return "interrupted" if first.get("interrupted") else first["status"]
    failed = next((r for _, r in sorted(results.items()) if r.get("status") == "failed"), None)
    if failed is not None:
        raise RankFailure(str(failed.get("error") or "a rank failed"), failed.get("traceback"))
    raise RunSetupError(f"the data-parallel launch ended with exit code {rc} and no result from rank 0; "
                        "see the worker's log for the ranks' output")


@contextlib.contextmanager
def stopped_by_file(result_path: str) -> Any:
    """While the ranks reporting to ``result_path`` run, a shutdown signal creates their stop
    file (``worker.ranks.stop_file``) instead of ending their process group."""
    global _stop_file
    from worker.ranks import stop_file

    _stop_file = stop_file(result_path)
    try:
        yield
    finally:
        _stop_file = None


def _launch(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher in its own process group; if this worker is being shut down, pass the
    signal on to the whole group (launcher and ranks) and wait for it."""
    global _launched
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    _launched = proc
    try:
        return proc.wait()
    except BaseException:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except Exception:
            proc.kill()
        raise
    finally:
        _launched = None


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, RunSetupError) or getattr(e, "plain_message", False) or not text:
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

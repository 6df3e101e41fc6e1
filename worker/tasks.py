"""The task that delivers a run to the trainer: ``worker.tasks.train_run(run_id)``.

Imported only in worker processes. Nothing heavy at import (no torch, no CUDA: prefork children
are forked after import, STACK.md C7); the trainer is imported inside the task body.

The task takes only the id and checks the world itself (STYLE.md §5): it claims the run only
if it is still ``queued`` (a cancelled run, or a second delivery of the same message, exits
quietly), loads the stored config, prunes rows past the last checkpoint and resumes from it,
runs the trainer with the store-backed Recorder and Control, and ends the attempt
``succeeded``, ``cancelled`` or ``failed`` (message and traceback stored). A worker that lost
its lease (a sweep declared it dead) stops without touching the row.

Shutdown (Ctrl-C or SIGTERM on ``grpo-guard serve`` / ``worker``): the run checkpoints at once
and ends ``interrupted``, which the next worker's sweep requeues (``worker.shutdown``). The
stored config, the resume point and the recorded end are ``worker.attempt``'s, shared with a
multi-node run's node 0 (``worker.gang``).

Which trainer runs: ``TRAIN_FN`` if a test set it, else ``GG_TRAINER=module:function`` if an
operator set it, else ``grpo_guard.training.trainer.train``.

A run with ``num_gpus`` > 1 needs a worker that owns that many GPUs (``grpo-guard worker --gpus
0+1``: one worker, ``CUDA_VISIBLE_DEVICES=0,1``, ``GG_WORKER_GPU=0,1``). The task then starts
``accelerate launch`` on the first ``num_gpus`` of them, running ``worker.ranks`` (rank 0 records
to the store under this task's lease), waits for it, and ends the attempt from the ranks' result
files. A worker with too few GPUs fails the run with a message saying how to start one.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init

from grpo_guard.quiet import silence_library_noise
from grpo_guard.store import lifecycle
from grpo_guard.store.lifecycle import LeaseLostError
from grpo_guard.store.recorder import StoreControl, StoreRecorder
from worker import (
    attempt,
    recovery,  # noqa: F401  (connects the worker_ready sweep)
    shutdown,
)
from worker.attempt import RankFailure, RunSetupError
from worker.celery_app import EVAL_TASK_NAME, TASK_NAME

silence_library_noise()  # this process is started by celery, not by the grpo-guard CLI

log = logging.getLogger("worker.tasks")

TRAIN_FN: Callable[..., Any] | None = None  # test hook: a train(config, recorder, control, ...) double
# test hook: runs a multi-GPU launch command (argv, env) and returns its exit code
LAUNCH_FN: Callable[[list[str], dict[str, str]], int] | None = None


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
    if shutdown.main_shutting_down:  # a replacement child forked during shutdown: it will never run a run
        return
    _preload = threading.Thread(target=_import_preload, name="gg-preload", daemon=True)
    _preload.start()


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
    with shutdown.handlers():
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
        shutdown.running.set()
        try:
            return gangs.execute(run_id, task_id=task_id, gang=gang)
        finally:
            shutdown.running.clear()
    host = os.environ.get("GG_WORKER_NAME") or socket.gethostname()
    gpu = os.environ.get("GG_WORKER_GPU") or None

    # 1. Claim: only a queued run, with a fresh lease.
    claim = lifecycle.claim_run(run_id, worker_host=host, worker_gpu=gpu, task_id=task_id)
    if claim is None:
        log.info("run %s is not queued (cancelled, deleted or taken by another delivery): skipping", run_id)
        return "skipped"

    recorder = StoreRecorder(run_id, lease=claim.lease, attempt=claim.attempt,
                             flush_interval=attempt.env_float("GG_FLUSH_SECONDS", 0.5),
                             heartbeat_interval=attempt.env_float("GG_HEARTBEAT_SECONDS", 5.0))
    control = shutdown.ShutdownAwareControl(StoreControl(run_id, lease=claim.lease))
    shutdown.running.set()
    try:
        # 2. The stored config, 3. the resume point, 4. the trainer.
        config = attempt.load_config(run_id)
        resume_from = attempt.resume_point(run_id, claim.attempt, recorder)
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
        if status == "interrupted" or (status == "cancelled" and result is not None and shutdown.interrupt.is_set()
                                       and not control.user_stop):  # (a multi-GPU run's rank 0 said which)
            # a shutdown, not the user's stop: hand the run back for the next worker
            if not lifecycle.interrupt_run(run_id, claim.lease, step=getattr(result, "step", None)):
                log.warning("run %s: lease lost before the interrupt could be recorded", run_id)
            log.warning("run %s: interrupted (checkpointed); it resumes when a worker starts", run_id)
            return "interrupted"
        attempt.finish(run_id, claim.lease, status)
        return status
    except LeaseLostError as e:
        log.warning("run %s: %s", run_id, e)
        return "lease-lost"
    except Exception as e:
        message = attempt.describe(e)
        tb = getattr(e, "rank_traceback", None) or traceback.format_exc()
        log.error("run %s failed: %s", run_id, message)
        try:
            recorder.log_line(f"failed: {message}", "error")
            recorder.close()
        except Exception as close_error:  # the store itself may be what failed
            log.warning("run %s: could not flush the last rows: %s", run_id, close_error)
        attempt.finish(run_id, claim.lease, "failed", error=message, tb=tb)
        return "failed"
    except BaseException as e:  # SystemExit / KeyboardInterrupt: the worker is being shut down
        message = f"the worker was shut down while the run was going ({type(e).__name__}); resume it to continue"
        try:
            recorder.close()
            attempt.finish(run_id, claim.lease, "failed", error=message, tb=traceback.format_exc())
        except BaseException:
            pass  # the stale-heartbeat sweep will recover it
        raise
    finally:
        shutdown.running.clear()


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
        with shutdown.stopped_by_file(result):
            if shutdown.interrupt.is_set():  # shut down before the launch: nothing ran, the checkpoint stands
                return "interrupted"
            rc = (LAUNCH_FN or shutdown.launch)(cmd, env)
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



"""Crash recovery driven by the database: the stale-heartbeat sweep.

A worker killed with SIGKILL (or a host that vanished) leaves its run ``running`` with a
heartbeat that stops moving. ``sweep()`` finds such runs and, per GG_ON_LOST, requeues them as a
new attempt (the task resumes from the last checkpoint and prunes the rows after it, so the
history stays continuous) or fails them with a message saying how to resume. A run that was
``stopping`` ends ``cancelled``. Each takeover is a conditional update on the old lease and
heartbeat, so of several sweepers exactly one acts, and the old worker, should it still be alive,
is fenced off (its next write raises ``LeaseLostError`` and it stops).

Runs left ``interrupted`` by a worker that was shut down (Ctrl-C, SIGTERM: it checkpointed them on
the way out) are requeued by the first sweep that sees them, with no stale wait: at the next
worker's start, or by any worker still running.

The sweep also re-sends queued runs whose message may have been lost (a broker restarted without
persistence) once they have waited GG_RESEND_QUEUED_AFTER seconds; a duplicate is harmless
because a task only starts a run it can claim.

Every worker sweeps when it starts and then every GG_SWEEP_INTERVAL seconds (in the main
process, which never touches CUDA); ``grpo-guard runs sweep`` does one pass by hand.

Environment: GG_STALE_AFTER (s, default 120), GG_ON_LOST (requeue | fail, default requeue),
GG_MAX_ATTEMPTS (default 3; a run lost that often fails), GG_SWEEP_INTERVAL (s, default 30;
0 turns the periodic sweep off), GG_RESEND_QUEUED_AFTER (s, default 900; 0 turns it off).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery.signals import worker_ready, worker_shutting_down

from grpo_guard.store import lifecycle
from grpo_guard.store.queries import stale_after as default_stale_after

log = logging.getLogger("worker.recovery")


@dataclass(frozen=True)
class SweepAction:
    run_id: int
    action: str  # resumed | requeued | failed | cancelled | resent
    message: str


def _env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def sweep(*, stale_after: float | None = None, on_lost: str | None = None, max_attempts: int | None = None,
          resend_after: float | None = None, enqueue: Callable[[int], object] | None = None) -> list[SweepAction]:
    """One recovery pass; returns what it did."""
    stale = float(stale_after if stale_after is not None else default_stale_after())
    policy = (on_lost or os.environ.get("GG_ON_LOST", "requeue")).strip().lower()
    if policy not in ("requeue", "fail"):
        raise ValueError(f"GG_ON_LOST must be 'requeue' or 'fail', got {policy!r}")
    attempts = int(max_attempts if max_attempts is not None else _env("GG_MAX_ATTEMPTS", 3))
    resend = float(resend_after if resend_after is not None else _env("GG_RESEND_QUEUED_AFTER", 900))
    if enqueue is None:
        from worker.celery_app import enqueue_run as enqueue

    done: list[SweepAction] = []
    for run_id in lifecycle.interrupted_runs():
        if lifecycle.requeue_interrupted(run_id):  # of several sweepers, one wins
            ckpt = lifecycle.latest_checkpoint(run_id)
            where = f"the checkpoint of step {ckpt[0]}" if ckpt else "the start"
            msg = f"interrupted by a worker shutdown; requeued, resuming from {where}"
            log.warning("run %s: %s", run_id, msg)
            done.append(SweepAction(run_id, "resumed", msg))
            _send(enqueue, run_id)
    for lost in lifecycle.find_stale(stale):
        seen = lost.heartbeat_at.isoformat(timespec="seconds") if lost.heartbeat_at else "never"
        who = f"worker {lost.worker_host or '?'} stopped heartbeating (last heartbeat {seen}, over {stale:g}s ago)"
        ckpt = lifecycle.latest_checkpoint(lost.run_id)
        where = f"the checkpoint of step {ckpt[0]}" if ckpt else "the start (no checkpoint yet)"
        if lost.status == "stopping":
            action, msg = "cancelled", f"{who} while stopping; marked cancelled"
        elif policy == "requeue" and lost.attempt < attempts:
            action, msg = "requeued", f"{who}; requeued as attempt {lost.attempt + 1}, resuming from {where}"
        else:
            why = f"lost {lost.attempt} times" if policy == "requeue" else "presumed dead"
            action = "failed"
            msg = (f"{who}: {why}; marked failed. Resume it from {where} with "
                   f"`grpo-guard runs resume {lost.run_id}`")
        if not lifecycle.recover_lost(lost, action="requeue" if action == "requeued" else "fail", reason=msg):
            continue  # another sweeper, or the worker itself, got there first
        log.warning("run %s: %s", lost.run_id, msg)
        done.append(SweepAction(lost.run_id, action, msg))
        if action == "requeued":
            _send(enqueue, lost.run_id)
    if resend > 0:
        for run_id, previous in lifecycle.queued_waiting(resend):
            if lifecycle.touch_enqueued(run_id, previous):
                _send(enqueue, run_id)
                done.append(SweepAction(run_id, "resent", f"queued for over {resend:g}s: message sent again"))
    return done


def _send(enqueue: Callable[[int], object], run_id: int) -> None:
    try:
        enqueue(run_id)
    except Exception as e:  # broker down: the run stays queued and is re-sent by a later sweep
        log.error("run %s: could not send the task (%s); a later sweep will retry", run_id, e)


# ---- in the worker process --------------------------------------------------------------------
# The periodic sweep runs in a thread of the prefork parent, which forks a fresh child per run.
# A fork taken while that thread is mid-pass copies whatever locks it holds (database driver,
# connection pool, broker client) into the child, where nobody will ever release them: the
# child then hangs (seen with the Redis transport). So a pass holds `_pass_lock`, and every fork
# waits for the pass in flight to finish.
_stop = threading.Event()
_pass_lock = threading.Lock()


def _before_fork() -> None:
    _pass_lock.acquire()


def _after_fork_in_parent() -> None:
    _pass_lock.release()


def _after_fork_in_child() -> None:
    global _pass_lock
    _pass_lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _guarded_sweep() -> list[SweepAction]:
    with _pass_lock:
        return sweep()


def _periodic(interval: float) -> None:
    while not _stop.wait(interval):
        try:
            _guarded_sweep()
        except Exception as e:  # never let the sweeper kill the worker
            log.warning("sweep failed: %s", e)


@worker_ready.connect
def _on_worker_ready(**_: object) -> None:
    try:
        for a in _guarded_sweep():
            log.warning("startup sweep: run %s %s", a.run_id, a.action)
    except Exception as e:
        log.warning("startup sweep failed: %s", e)
    interval = _env("GG_SWEEP_INTERVAL", 30)
    if interval > 0:
        _stop.clear()
        threading.Thread(target=_periodic, args=(interval,), name="gg-sweep", daemon=True).start()


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    _stop.set()

"""A worker's shutdown, seen from the run it is running (Ctrl-C or SIGTERM on ``grpo-guard serve``
/ ``worker``, or on the Celery worker itself).

The worker's main process starts Celery's warm shutdown and sends SIGINT to its pool children
(:func:`interrupt_children`). In the child running a run, SIGINT or SIGTERM only set
:data:`interrupt`, which the trainer checks between the stages of an epoch
(``grpo_guard.training.interrupt``): it checkpoints at once and the run ends ``interrupted``,
which the next worker's sweep requeues at once. A multi-GPU run's ranks learn of it from a stop
file (``worker.ranks``, :func:`stopped_by_file`) and stop together. A second SIGTERM, or either
signal in an idle child, acts as before (exit; a launch's ranks are terminated)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from celery.signals import worker_shutdown, worker_shutting_down

from grpo_guard.store.recorder import StoreControl

log = logging.getLogger("worker.tasks")

interrupt = threading.Event()  # this process is being shut down
running = threading.Event()    # a run is in progress in this process
launched: subprocess.Popen | None = None  # the accelerate launcher of a multi-GPU run, if any
stop_file: str | None = None  # the file that asks that run's ranks to stop (worker.ranks.stop_file)
via_node_0 = False  # a gang's other node: its node 0 stops the gang (worker.gang), this one waits
main_shutting_down = False  # set in the main process at shutdown; children forked after inherit it


def on_signal(signum: int, _frame: Any) -> None:
    """In a pool child: the first SIGINT/SIGTERM during a run asks the trainer to checkpoint and
    stop; a second SIGTERM, or one while idle, ends the process as the default would."""
    if not running.is_set() or (signum == signal.SIGTERM and interrupt.is_set()):
        if signum == signal.SIGINT:
            return  # Celery's children ignore SIGINT; an idle child has nothing to save
        if launched is not None:  # not leaving the ranks behind: they end ``failed`` (resumable)
            with contextlib.suppress(OSError):
                os.killpg(launched.pid, signal.SIGTERM)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not interrupt.is_set():
        log.warning("shutdown requested: the run checkpoints and stops as soon as its state allows")
    interrupt.set()
    if stop_file is not None:  # a multi-GPU run: its ranks see the file and stop together
        with contextlib.suppress(OSError), open(stop_file, "a", encoding="utf-8"):
            pass
    elif via_node_0:  # the gang's node 0 hears of it through the store and stops every node
        pass
    elif launched is not None:  # a launch that names no stop file: end its group as before
        with contextlib.suppress(OSError):
            os.killpg(launched.pid, signal.SIGTERM)


@contextlib.contextmanager
def handlers() -> Any:
    """SIGINT/SIGTERM handlers for the duration of a run (installed here, in the task, because
    billiard resets both after ``worker_process_init``); only in a main thread (not in the test
    thread-pool worker)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
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

    global main_shutting_down
    main_shutting_down = True
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
        return self.user_stop or interrupt.is_set()

    def interrupted(self) -> bool:
        return interrupt.is_set()

    def take_sample_now(self) -> bool:
        return self.inner.take_sample_now()

    def take_save_now(self) -> bool:
        return self.inner.take_save_now()


@contextlib.contextmanager
def stopped_by_file(result_path: str) -> Any:
    """While the ranks reporting to ``result_path`` run, a shutdown signal creates their stop
    file (``worker.ranks.stop_file``) instead of ending their process group."""
    global stop_file
    from worker import ranks

    stop_file = ranks.stop_file(result_path)
    try:
        yield
    finally:
        stop_file = None


@contextlib.contextmanager
def stopped_by_node_0() -> Iterator[None]:
    """While a gang's other node runs its ranks, a first shutdown signal only sets
    :data:`interrupt`: the node's watch (``worker.gang``) asks node 0 to stop the whole gang at
    its next checkpoint, and this node waits for its ranks to end. Ending the group here would
    break the gang's collectives and cost every step since the last checkpoint."""
    global via_node_0
    via_node_0 = True
    try:
        yield
    finally:
        via_node_0 = False


def launch(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher in its own process group; if this worker is being shut down, pass the
    signal on to the whole group (launcher and ranks) and wait for it."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    with tracking(proc):
        try:
            return proc.wait()
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except Exception:
                proc.kill()
            raise


def shutting_down() -> bool:
    """This process is being shut down (a local flag, no database read)."""
    return interrupt.is_set()


@contextlib.contextmanager
def tracking(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """While ``proc`` (a launcher in its own process group) runs, a second SIGTERM ends its group
    instead of leaving its ranks behind."""
    global launched
    launched = proc
    try:
        yield proc
    finally:
        launched = None

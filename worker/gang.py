"""A multi-node run (``num_nodes`` N > 1) taken by a gang of N workers (issue 23, "Queue").

The run's message goes to ``<queue>-<N>x<G>gpu`` (``celery_app.run_queue``), which every worker
owning G GPUs consumes for the gang sizes of GG_GANG_NODES. The worker that takes it:

1. *leads* a new formation when none is open (``store.gangs.take``): it is node 0, publishes its
   rendezvous endpoint (GG_WORKER_ADDRESS, else this host's address, and a free port) in the
   store and sends N-1 join messages (``train_run(run_id, gang=TOKEN)``) to the same queue;
2. or *joins* the open formation with the lowest free node rank (an atomic INSERT). A join
   message whose formation has closed is dropped, so old messages never pile up.

Each member then holds its worker: Celery's prefetch 1 and ``acks_late`` mean a worker waiting
in a gang takes nothing else, and a message is only acknowledged when its member is done. The
run row stays ``queued`` while the gang forms. When all N have joined before the deadline
(GG_GANG_TIMEOUT_S, default 300 s), node 0 seals the gang, claims the run and every node
launches its part: ``accelerate launch --num_machines N --machine_rank R --main_process_ip ADDR
--main_process_port PORT -m worker.ranks`` (``launch_module_command``), the same rank entry
point as one-node multi-GPU runs, so only global rank 0 records and Stop / Sample now / Save now
act as they do there (rank 0 reads the flags; the stop is broadcast to every rank of every node).

A gang not complete by the deadline is released: node 0 sends the run's message again and every
member goes back to its queue; nothing was claimed or trained. A node whose launch dies, or whose
worker stops heartbeating in the store (GG_GANG_STALE_S, default 30 s), is *lost*: node 0 stops
its own launch (the other ranks would otherwise wait in their next collective), requeues the
run as a new attempt and sends it again; the next full gang resumes from the last checkpoint
(rows after it are pruned, as for any resumed run). Node 0's own loss is the ordinary lost
worker: its heartbeat stops, the sweep requeues the run, and the other nodes stop on seeing the
run's attempt change. Checkpoints and the store must be shared by every node (as for any worker).

A worker shutdown (Ctrl-C, SIGTERM) on any node costs no step: node 0's worker creates its
ranks' stop file, another node's worker marks its row ``stopping`` and waits, and node 0 then
creates the stop file itself; rank 0 checkpoints, every rank of every node stops together, and
the run ends ``interrupted`` (resumed by the next full gang). A second SIGTERM ends the ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from grpo_guard.store import gangs, lifecycle
from grpo_guard.training.distributed import free_port
from worker import ranks, shutdown
from worker.attempt import RankFailure, RunSetupError, describe, env_float, finish, load_config, resume_point

log = logging.getLogger("worker.gang")

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_STALE_S = 30.0
POLL_S = 0.2


def timeout_s() -> float:
    """GG_GANG_TIMEOUT_S: how long a formation waits for all its nodes."""
    return env_float("GG_GANG_TIMEOUT_S", DEFAULT_TIMEOUT_S)


def stale_s() -> float:
    """GG_GANG_STALE_S: a ready node whose worker has not beaten for this long is lost."""
    return env_float("GG_GANG_STALE_S", DEFAULT_STALE_S)


def worker_address() -> str:
    """The address the other nodes reach this worker at: GG_WORKER_ADDRESS, else the address this
    host's name resolves to, else 127.0.0.1."""
    given = os.environ.get("GG_WORKER_ADDRESS", "").strip()
    if given:
        return given
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def num_nodes_of(run_id: int) -> int:
    """The stored config's num_nodes (1 when there is none to read: the ordinary path reports it)."""
    stored = lifecycle.stored_config(run_id)
    try:
        n = json.loads(stored[0]).get("num_nodes", 1) if stored else 1
    except (ValueError, TypeError, AttributeError):
        return 1
    return n if isinstance(n, int) and n >= 1 else 1


def execute(run_id: int, *, task_id: str | None = None, gang: str | None = None) -> str:
    """Take part in the gang of multi-node run ``run_id``. Returns what happened: succeeded |
    cancelled | failed | interrupted | lease-lost (node 0's end of the run), node-done | node-lost |
    node-stopped (another node's end of its part), requeued (a node was lost), gang-timeout, or
    skipped."""
    from worker import tasks

    host = os.environ.get("GG_WORKER_NAME") or socket.gethostname()
    gpu = os.environ.get("GG_WORKER_GPU") or None
    try:
        config = load_config(run_id)
    except RunSetupError as e:
        if lifecycle.fail_unclaimed(run_id, str(e)):
            log.error("run %s failed: %s", run_id, e)
            return "failed"
        return "skipped"
    gpus = tasks.owned_gpus()
    if not gpus and config.num_gpus == 1:
        gpus = ["0"]  # a CPU worker is a one-"GPU" node, as it takes one-GPU runs (its rank runs on CPU)
    if len(gpus) < config.num_gpus:
        msg = (f"a worker owning {len(gpus)} GPU(s) took a node of a run with num_gpus={config.num_gpus} per node; "
               f"start its workers with --gpus {'+'.join(map(str, range(config.num_gpus)))}")
        lifecycle.fail_unclaimed(run_id, msg)
        return "failed"
    address, port = worker_address(), free_port("")
    if gang is not None:
        member = gangs.join(run_id, gang, host=host, gpu=gpu)
    else:
        member = gangs.take(run_id, config.num_nodes, host=host, gpu=gpu, address=address, port=port,
                            timeout_s=timeout_s(), num_gpus=config.num_gpus)
    if member is None:
        log.info("run %s: no place in a gang (not queued, formation full or closed): skipping", run_id)
        return "skipped"
    part = _Part(run_id, member, config, gpus[:config.num_gpus], host, gpu, task_id)
    return part.lead() if member.node_rank == 0 else part.follow()


class _Part:
    """This worker's node of the gang."""

    def __init__(self, run_id: int, member: gangs.Membership, config: Any, gpus: list[str], host: str,
                 gpu: str | None, task_id: str | None) -> None:
        self.run_id, self.m, self.config, self.gpus = run_id, member, config, gpus
        self.host, self.gpu, self.task_id = host, gpu, task_id
        self.n = member.num_nodes
        self.result_path: str | None = None  # this node's launch's result files, while it runs

    # ---- forming ---------------------------------------------------------------------------
    def lead(self) -> str:
        m = self.m
        gangs.log(self.run_id, f"gang of {self.n} nodes forming: node 0 is {self.host} ({m.address}:{m.port}); "
                               f"waiting up to {timeout_s():g}s for {self.n - 1} more")
        for _ in range(self.n - 1):
            self._send_join()
        while gangs.joined_count(self.run_id, m.gang) < self.n:
            if time.monotonic() > self._deadline():
                return self._give_back()
            if gangs.run_state(self.run_id)[0] != "queued":  # cancelled or deleted while forming
                gangs.release(self.run_id, m.gang)
                return "skipped"
            if shutdown.shutting_down():  # this worker is being shut down: the run goes to the next gang
                gangs.release(self.run_id, m.gang)
                _send_again(self.run_id)
                return "interrupted"
            older = gangs.older_formation(m)
            if older is not None and gangs.joined_count(*older) < self.n:
                return self._yield_to(*older)
            self._beat()
            time.sleep(POLL_S)
        claim = lifecycle.claim_run(self.run_id, worker_host=self.host, worker_gpu=self.gpu, task_id=self.task_id)
        if claim is None:  # cancelled while forming
            gangs.release(self.run_id, m.gang)
            return "skipped"
        if not gangs.seal(self.run_id, m.gang, self.n, claim.attempt):
            gangs.release(self.run_id, m.gang)
            gangs.requeue_lost_gang(self.run_id, claim.lease, "a node left the gang as it was sealed")
            _send_again(self.run_id)
            return "requeued"
        return self._run_as_node_0(claim)

    def _deadline(self) -> float:
        """The formation deadline on this process's monotonic clock."""
        if not hasattr(self, "_mono_deadline"):
            from grpo_guard.store.db import utcnow

            self._mono_deadline = time.monotonic() + (self.m.deadline - utcnow()).total_seconds()
        return self._mono_deadline

    def _beat(self) -> None:
        """This node's heartbeat in the store, at most once a second (SQLite has one writer)."""
        now = time.monotonic()
        if now - getattr(self, "_last_beat", 0.0) >= 1.0:
            self._last_beat = now
            gangs.beat(self.run_id, self.m.gang, self.m.node_rank)

    def _yield_to(self, other_run: int, other_gang: str) -> str:
        """Give this run back and join the older formation of ``other_run`` instead (see
        ``store.gangs.older_formation``)."""
        gangs.release(self.run_id, self.m.gang)
        gangs.log(self.run_id, f"gang released in favour of run {other_run}'s, which began forming first; "
                               "back to the queue")
        _send_again(self.run_id)
        joined = gangs.join(other_run, other_gang, host=self.host, gpu=self.gpu)
        if joined is None:
            return "gang-timeout"
        log.info("run %s: this worker joins run %s's gang as node %d instead", self.run_id, other_run,
                 joined.node_rank)
        try:
            config = load_config(other_run)
        except Exception as e:  # its own node 0 reports a bad config; leave its gang
            log.warning("run %s: cannot join run %s's gang (%s)", self.run_id, other_run, e)
            gangs.leave(other_run, other_gang, joined.node_rank)
            return "gang-timeout"
        return _Part(other_run, joined, config, self.gpus, self.host, self.gpu, None).follow()

    def _send_join(self) -> None:
        from worker import celery_app

        try:
            celery_app.enqueue_gang_join(self.run_id, self.m.gang, num_gpus=self.config.num_gpus, num_nodes=self.n)
        except Exception as e:  # the formation's deadline gives the run back if no one comes
            log.error("run %s: could not send a join message (%s)", self.run_id, e)

    def _give_back(self) -> str:
        joined = gangs.joined_count(self.run_id, self.m.gang)
        gangs.release(self.run_id, self.m.gang)
        gangs.log(self.run_id, f"gang incomplete after {timeout_s():g}s ({joined} of {self.n} nodes joined): "
                               "released, nothing trained; the run goes back to the queue", "warning")
        log.warning("run %s: gang incomplete (%d of %d nodes); back to the queue", self.run_id, joined, self.n)
        _send_again(self.run_id)
        return "gang-timeout"

    def follow(self) -> str:
        m = self.m
        grace = stale_s()
        while True:
            mine, head = gangs.states_of(self.run_id, m.gang, (m.node_rank, 0))
            if mine == "ready":
                break
            if mine != "joined" or head not in ("joined", "ready"):  # ready: sealed, this node's row next
                return "gang-timeout"  # node 0 released the formation
            if time.monotonic() > self._deadline() + grace:  # node 0 died while forming
                gangs.leave(self.run_id, m.gang, m.node_rank)
                return "gang-timeout"
            if shutdown.shutting_down() and gangs.leave(self.run_id, m.gang, m.node_rank):
                self._send_join()  # another worker takes this node's place
                return "interrupted"
            self._beat()
            time.sleep(POLL_S)
        attempt = next((x.attempt for x in gangs.members(self.run_id) if x.node_rank == m.node_rank), None) or 1
        resume = _checkpoint_path(self.run_id)
        rc, results, why = self._launch("-", attempt, resume, self._follower_should_stop(attempt))
        # lost: a rank of this node died without reporting (killed, out of memory); a node told to
        # stop because the attempt ended or a peer was lost did not die itself
        ok = rc == 0 or (len(results) == self.config.num_gpus and all(r.get("status") for r in results.values()))
        gangs.end(self.run_id, m.gang, m.node_rank, "done" if ok or why else "lost")
        if ok and shutdown.shutting_down():  # node 0 stopped the gang for this worker's shutdown
            return "interrupted"
        if why:
            log.warning("run %s: node %d stopped: %s", self.run_id, m.node_rank, why)
            return "node-stopped"
        return "node-done" if ok else "node-lost"

    def _follower_should_stop(self, attempt: int) -> Callable[[], str | None]:
        asked = False

        def check() -> str | None:
            nonlocal asked
            if shutdown.shutting_down() and not asked:  # node 0 stops the gang at its next checkpoint
                asked = True
                if gangs.ask_to_stop(self.run_id, self.m.gang, self.m.node_rank):
                    gangs.log(self.run_id, f"node {self.m.node_rank}'s worker ({self.host}) is shutting down: "
                                           "node 0 checkpoints and stops the gang", "warning")
            status, now_attempt = gangs.run_state(self.run_id)
            if now_attempt != attempt or status in ("queued", "failed", "cancelled", "interrupted"):
                return f"the run's attempt {attempt} ended ({status})"
            head = gangs.state_of(self.run_id, self.m.gang, 0)
            if head in ("lost", "released", None):
                return "node 0 left the gang"
            lost = [r for r in gangs.lost_nodes(self.run_id, self.m.gang, stale_s()) if r != self.m.node_rank]
            return f"node(s) {lost} lost" if lost else None
        return check

    # ---- node 0: the run's recorder -----------------------------------------------------------
    def _run_as_node_0(self, claim: Any) -> str:
        from grpo_guard.store.lifecycle import LeaseLostError
        from grpo_guard.store.recorder import StoreRecorder

        recorder = StoreRecorder(self.run_id, lease=claim.lease, attempt=claim.attempt,
                                 flush_interval=env_float("GG_FLUSH_SECONDS", 0.5),
                                 heartbeat_interval=env_float("GG_HEARTBEAT_SECONDS", 5.0))
        try:
            nodes = ", ".join(f"node {x.node_rank} {x.worker_host}" for x in gangs.members(self.run_id))
            recorder.log_line(f"gang of {self.n} nodes × {self.config.num_gpus} GPU(s): {nodes}")
            resume = resume_point(self.run_id, claim.attempt, recorder)
            recorder.flush()
            rc, results, why = self._launch(claim.lease, claim.attempt, resume, self._leader_should_stop())
            first = results.get(0) or {}
            if first.get("status") == "lease-lost":
                gangs.end(self.run_id, self.m.gang, 0, "done")
                return "lease-lost"
            # a shutdown (Ctrl-C, SIGTERM) ends the launcher with a signal's exit code after the
            # ranks checkpointed and stopped together
            if not why and first.get("status") in ("succeeded", "cancelled") and (rc == 0 or shutdown.shutting_down()):
                gangs.end(self.run_id, self.m.gang, 0, "done")
                recorder.close()
                return self._finish(claim, first)
            if shutdown.shutting_down():  # stopped before rank 0 could report: the sweep resumes it at once
                gangs.end(self.run_id, self.m.gang, 0, "done")
                with contextlib.suppress(Exception):
                    recorder.close()
                lifecycle.interrupt_run(self.run_id, claim.lease)
                return "interrupted"
            lost = self._lost_after_failure() if not why else gangs.lost_nodes(self.run_id, self.m.gang, stale_s())
            gangs.end(self.run_id, self.m.gang, 0, "done")
            if why or lost or not first:
                reason = why or (f"node(s) {lost} of the gang lost" if lost else "node 0's rank 0 ended without a result")
                gangs.mark_lost(self.run_id, self.m.gang, [r for r in lost if r != 0])
                with contextlib.suppress(Exception):
                    recorder.close()
                return self._requeue(claim, reason)
            failed = next((r for _, r in sorted(results.items()) if r.get("status") == "failed"), None) or {}
            raise RankFailure(str(failed.get("error") or f"the gang's launch on node 0 exited with {rc}"),
                              failed.get("traceback"))
        except LeaseLostError as e:
            log.warning("run %s: %s", self.run_id, e)
            return "lease-lost"
        except Exception as e:
            import traceback

            message = describe(e)
            with contextlib.suppress(Exception):
                recorder.log_line(f"failed: {message}", "error")
                recorder.close()
            finish(self.run_id, claim.lease, "failed", error=message,
                   tb=getattr(e, "rank_traceback", None) or traceback.format_exc())
            gangs.end(self.run_id, self.m.gang, 0, "done")
            return "failed"

    def _leader_should_stop(self) -> Callable[[], str | None]:
        def check() -> str | None:
            lost = [r for r in gangs.lost_nodes(self.run_id, self.m.gang, stale_s()) if r != 0]
            if lost:
                return f"node(s) {lost} of the gang lost"
            result = self.result_path
            if result and gangs.stopping_nodes(self.run_id, self.m.gang):
                # another node's worker shuts down: the ranks stop together at the next point
                # where rank 0 can checkpoint, as for this worker's own shutdown (worker.ranks)
                with contextlib.suppress(OSError), open(ranks.stop_file(result), "a", encoding="utf-8"):
                    pass
            return None
        return check

    def _lost_after_failure(self) -> list[int]:
        """After node 0's ranks failed: wait (up to the stale window) until every other node has
        ended or gone stale, and say which were lost. A peer's death reaches node 0 as a failed
        collective before its worker's heartbeat goes stale."""
        deadline = time.monotonic() + stale_s() + 2 * POLL_S
        while True:
            lost = [r for r in gangs.lost_nodes(self.run_id, self.m.gang, stale_s()) if r != 0]
            open_ = [x for x in gangs.members(self.run_id) if x.node_rank != 0 and x.state in gangs.TRAINING]
            if lost or not open_ or time.monotonic() > deadline:
                return lost
            self._beat()
            time.sleep(POLL_S)

    def _finish(self, claim: Any, first: dict[str, Any]) -> str:
        """End the attempt from rank 0's result; ``interrupted`` where rank 0 stopped for a
        shutdown (this worker's, or another node's)."""
        status = first["status"]
        if first.get("interrupted") or (status == "cancelled" and shutdown.shutting_down()
                                        and not _user_stopped(self.run_id)):
            lifecycle.interrupt_run(self.run_id, claim.lease, step=first.get("step"))
            return "interrupted"
        finish(self.run_id, claim.lease, status)
        return status

    def _requeue(self, claim: Any, reason: str) -> str:
        limit = int(env_float("GG_MAX_ATTEMPTS", 3))
        if claim.attempt >= limit:  # as for a lost worker: a run lost that often fails
            finish(self.run_id, claim.lease, "failed",
                   error=f"{reason} (attempt {claim.attempt} of at most {limit}); resume it to try again")
            return "failed"
        log.warning("run %s: %s: requeued", self.run_id, reason)
        if gangs.requeue_lost_gang(self.run_id, claim.lease, reason):
            _send_again(self.run_id)
            return "requeued"
        return "lease-lost"

    # ---- one node's launch ----------------------------------------------------------------------
    def _launch(self, lease: str, attempt: int, resume: str | None,
                should_stop: Callable[[], str | None]) -> tuple[int, dict[int, dict], str | None]:
        """Launch this node's ranks and wait, beating and watching the gang; returns (exit code,
        this node's rank results, why it was stopped or None)."""
        from grpo_guard.training.cpu import training_env
        from grpo_guard.training.distributed import launch_module_command
        from worker import tasks

        g, r = self.config.num_gpus, self.m.node_rank
        with tempfile.TemporaryDirectory(prefix=f"gg-run{self.run_id}-node{r}-") as tmp:
            result = self.result_path = os.path.join(tmp, "result")
            args = ["worker.ranks", str(self.run_id), "--lease", lease, "--attempt", str(attempt), "--result", result]
            if resume:
                args += ["--resume", resume]
            cmd = launch_module_command(args, g, self.gpus, main_process_port=self.m.port, num_nodes=self.n,
                                        node_rank=r, main_process_ip=self.m.address)
            log.info("run %s: node %d of %d launching: %s", self.run_id, r, self.n, " ".join(cmd))
            env = training_env()
            why: str | None = None
            # A shutdown on node 0 creates its ranks' stop file (worker.ranks), so rank 0
            # checkpoints and the whole gang stops together, ending interrupted. On another node
            # it asks node 0 to do the same through the store (the watch's check) and waits.
            with shutdown.stopped_by_file(result) if r == 0 else shutdown.stopped_by_node_0():
                if tasks.LAUNCH_FN is not None:  # test double: runs to its end
                    rc = tasks.LAUNCH_FN(cmd, env)
                else:
                    rc, why = _watched(cmd, env, lambda: (gangs.beat(self.run_id, self.m.gang, r), should_stop())[1])
            results = {}
            for rank in range(r * g, (r + 1) * g):
                with contextlib.suppress(OSError, ValueError), open(f"{result}.{rank}", encoding="utf-8") as fh:
                    results[rank] = json.load(fh)
        return rc, results, why


def _watched(cmd: list[str], env: dict[str, str], check: Callable[[], str | None]) -> tuple[int, str | None]:
    """Run the launcher in its own process group; every second ``check()`` (which beats this node
    in the store) may say why it must stop, and the group is then ended. A shutdown signal
    reaches the group through ``worker.shutdown`` as for a one-node launch."""

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    with shutdown.tracking(proc):
        return _watch(proc, check)


def _watch(proc: subprocess.Popen, check: Callable[[], str | None]) -> tuple[int, str | None]:
    why: str | None = None
    try:
        while proc.poll() is None:
            try:
                why = why or check()
            except Exception as e:  # the store is briefly unreachable: keep the ranks going
                log.warning("gang check failed: %s", e)
            if why:
                _end_group(proc)
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        return proc.wait(), why
    except BaseException:
        _end_group(proc)
        raise


def _end_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _checkpoint_path(run_id: int) -> str | None:
    from grpo_guard.store.artifacts import resolve

    latest = lifecycle.latest_checkpoint(run_id)
    return resolve(latest[1]) if latest else None


def _user_stopped(run_id: int) -> bool:
    return gangs.run_state(run_id)[0] == "stopping"


def _send_again(run_id: int) -> None:
    from worker import celery_app

    try:
        celery_app.enqueue_run(run_id)
    except Exception as e:  # broker down: the sweep re-sends queued runs
        log.error("run %s: could not send the task again (%s); the sweep re-sends it", run_id, e)

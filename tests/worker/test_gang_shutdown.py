"""A worker shutdown (Ctrl-C, SIGTERM) on a node of a multi-node run's gang other than node 0:
the node asks node 0 through the store, node 0 stops every rank at its next checkpoint, and the
run ends ``interrupted`` (no step lost), instead of the node's ranks dying and the run being
requeued from an older checkpoint. In-process, on the store; the real workers' version is in
``test_processes_gang.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import gangs, lifecycle, queries
from worker import shutdown
from worker.gang import _Part
from worker.ranks import stop_file

TWO_NODES = {"backbone": "toy", "group_size": 2, "prompts_per_epoch": 2, "num_steps": 2, "epochs": 2,
             "eval_seeds": [0], "num_nodes": 2}


@pytest.fixture
def sealed(store, monkeypatch):
    """A sealed 2-node gang: (run id, claim, node 0's part, node 1's part); this process not
    shutting down yet."""
    monkeypatch.setattr(shutdown, "interrupt", threading.Event())
    monkeypatch.setenv("GG_GANG_STALE_S", "60")
    config = RunConfig.from_dict(TWO_NODES)
    rid = queries.create_run(config)
    take = dict(gpu=None, address="127.0.0.1", port=1, timeout_s=30)
    lead, one = (gangs.take(rid, 2, host=f"w{i}", **take) for i in range(2))
    claim = lifecycle.claim_run(rid, worker_host="w0")
    assert gangs.seal(rid, lead.gang, 2, claim.attempt)
    return rid, claim, _Part(rid, lead, config, ["0"], "w0", None, None), _Part(rid, one, config, ["0"], "w1", None, None)


def test_another_nodes_shutdown_reaches_node_0s_ranks_as_their_stop_file(sealed, tmp_path):
    rid, claim, head, other = sealed
    follower_check, leader_check = other._follower_should_stop(claim.attempt), head._leader_should_stop()
    head.result_path = str(tmp_path / "result")
    assert follower_check() is None and leader_check() is None
    assert not os.path.exists(stop_file(head.result_path)) and gangs.stopping_nodes(rid, head.m.gang) == []

    shutdown.interrupt.set()  # node 1's worker got Ctrl-C: its ranks keep running
    assert follower_check() is None, "the node waits for node 0 to stop the gang"
    assert gangs.stopping_nodes(rid, head.m.gang) == [1]
    assert [m.state for m in gangs.members(rid)] == ["ready", "stopping"]
    assert any("node 1's worker (w1) is shutting down" in ln.message for ln in queries.log_lines(rid))
    assert follower_check() is None and len([ln for ln in queries.log_lines(rid) if "shutting down" in ln.message]) == 1

    assert leader_check() is None, "node 0 does not end its group: its ranks stop at the next checkpoint"
    assert os.path.exists(stop_file(head.result_path))
    assert gangs.lost_nodes(rid, head.m.gang, 60) == [], "a stopping node that beats is not lost"
    assert 1 in gangs.lost_nodes(rid, head.m.gang, -1), "one that stops beating is"


def test_rank_0s_interrupted_result_ends_the_attempt_interrupted_at_its_step(sealed):
    rid, claim, head, other = sealed
    assert gangs.ask_to_stop(rid, head.m.gang, 1)
    assert head._finish(claim, {"status": "cancelled", "interrupted": True, "step": 1}) == "interrupted"
    row = queries.get_run(rid)
    assert (row.status, row.attempt) == ("interrupted", 1)
    assert any("interrupted after step 1" in ln.message for ln in queries.log_lines(rid))
    gangs.end(rid, head.m.gang, 1, "done")  # a stopping node ends like a ready one
    assert [m.state for m in gangs.members(rid)] == ["ready", "done"]
    assert other._follower_should_stop(claim.attempt)() == "the run's attempt 1 ended (interrupted)"


def test_a_users_stop_still_ends_the_run_cancelled(sealed):
    rid, claim, head, _ = sealed
    assert head._finish(claim, {"status": "cancelled", "interrupted": False, "step": 1}) == "cancelled"
    assert queries.get_run(rid).status == "cancelled"


def test_on_another_node_the_first_signal_leaves_the_ranks_running_and_a_second_sigterm_ends_them(monkeypatch):
    group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    killed: list[tuple[int, int]] = []
    try:
        monkeypatch.setattr(shutdown, "interrupt", threading.Event())
        monkeypatch.setattr(shutdown, "running", threading.Event())
        shutdown.running.set()
        with shutdown.stopped_by_node_0(), shutdown.tracking(group):
            shutdown.on_signal(signal.SIGTERM, None)
            shutdown.on_signal(signal.SIGINT, None)  # Celery's main process passes it on too
            assert shutdown.interrupt.is_set() and group.poll() is None
            # the second SIGTERM: the group ends, then the process exits as the default would
            monkeypatch.setattr(shutdown.signal, "signal", lambda *a: None)
            monkeypatch.setattr(shutdown.os, "kill", lambda pid, sig: killed.append((pid, sig)))
            shutdown.on_signal(signal.SIGTERM, None)
            assert group.wait(timeout=30) == -signal.SIGTERM
        assert killed == [(os.getpid(), signal.SIGTERM)]
        assert not shutdown.via_node_0 and shutdown.launched is None
    finally:
        group.kill()
        group.wait()

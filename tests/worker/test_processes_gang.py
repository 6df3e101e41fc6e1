"""A multi-node run taken by a gang of real worker processes (issue 23, "Queue"): three CPU Celery
workers on the embedded broker (each a one-"GPU" node). Two of them form the gang of a
2-node run while the third runs an ordinary run; both nodes launch accelerate's real multi-node
launcher (gloo rendezvous on 127.0.0.1) running the trainer double; one node is then killed
with everything it started, and the run resumes from its checkpoint with a new gang, every
epoch recorded exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import gangs, queries
from tests.storehelpers import backend_env
from tests.worker.conftest import assert_continuous
from tests.worker.procs import wait_status, workers, world_env
from worker.celery_app import enqueue_run

pytestmark = [pytest.mark.slow]

EPOCHS, NUM_STEPS, EVAL_EVERY = 40, 2, 5


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a launcher runs in its own session, not in the worker's group)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait(predicate, what: str, timeout: float, ws) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout}s\n" + "\n".join(w.log()[-2500:] for w in ws))
        time.sleep(0.1)


def _gang_world(url: str, tmp_path, monkeypatch, *, stale_s: str) -> dict[str, str]:
    """The workers' environment (2-node gangs on 127.0.0.1, the trainer double at 0.2 s an epoch),
    set in this process too."""
    env = world_env(url, str(tmp_path), "embedded", GG_WORKER_ADDRESS="127.0.0.1", GG_GANG_NODES="2",
                    GG_GANG_TIMEOUT_S="60", GG_GANG_STALE_S=stale_s, GG_FAKE_STEP_SECONDS="0.2",
                    OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def test_a_gang_forms_beside_an_ordinary_run_and_a_lost_node_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    with backend_env("sqlite", tmp_path) as url:
        env = _gang_world(url, tmp_path, monkeypatch, stale_s="3")
        with workers(env, ["w1", "w2", "w3"], str(tmp_path)) as ws:
            ordinary = queries.create_run(RunConfig.from_dict({"epochs": 50, "num_steps": 2, "eval_seeds": [0]}))
            enqueue_run(ordinary)
            _wait(lambda: queries.get_run(ordinary).status == "running", "the ordinary run did not start", 60, ws)
            rid = queries.create_run(RunConfig.from_dict({
                "epochs": EPOCHS, "num_steps": NUM_STEPS, "eval_every": EVAL_EVERY, "checkpoint_every": 100,
                "eval_seeds": [0], "num_nodes": 2, "prompts_per_epoch": 2}))
            enqueue_run(rid)
            _wait(lambda: queries.get_run(rid).status == "running", "the gang did not form", 60, ws)
            first = gangs.members(rid)
            busy = queries.get_run(ordinary)
            assert busy.status == "running", "the third worker was busy with the ordinary run all along"
            assert [m.state for m in first] == ["ready", "ready"]
            assert {m.worker_host for m in first} == {"w1", "w2", "w3"} - {busy.worker_host}
            assert first[0].address == "127.0.0.1" and first[0].port

            _wait(lambda: queries.get_run(rid).step >= 6, "the gang did not train", 90, ws)
            assert queries.checkpoints(rid) == [], "checkpoint_every 100: only Save now makes one before the end"
            assert queries.request_save_now(rid)  # reaches rank 0, on node 0, like any run's flag
            # the flag is cleared when rank 0 takes it; the checkpoint row follows once it is written
            _wait(lambda: queries.checkpoints(rid), "Save now made no checkpoint", 60, ws)
            assert not queries.get_run(rid).save_now, "Save now was taken"
            saved = [c.step for c in queries.checkpoints(rid)]
            assert len(saved) == 1 and 6 <= saved[0] < EPOCHS, saved
            joiner = next(w for w in ws if w.name == first[1].worker_host)
            for pid in [joiner.proc.pid, *_descendants(joiner.proc.pid)]:  # the node dies with its ranks
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            joiner.proc.wait(10)

            assert wait_status(rid, timeout=150, workers_=ws) == "succeeded"
            assert wait_status(ordinary, timeout=60, workers_=ws) == "succeeded"
        row = queries.get_run(rid)
        assert row.attempt == 2
        lines = [ln.message for ln in queries.log_lines(rid, tail=10_000)]
        assert any("of the gang lost" in m and "requeued as attempt 2" in m for m in lines), lines[-20:]
        assert any(f"resuming from the checkpoint of step {saved[0]}" in m for m in lines), lines[-20:]
        second = gangs.members(rid)
        assert [m.state for m in second] == ["done", "done"] and all(m.attempt == 2 for m in second)
        assert joiner.name not in {m.worker_host for m in second}
        assert_continuous(rid, EPOCHS, NUM_STEPS, EVAL_EVERY)


def test_ctrl_c_on_a_node_other_than_0_stops_the_gang_at_a_checkpoint_and_loses_no_step(tmp_path, monkeypatch):
    """SIGTERM to the joiner's worker (what Ctrl-C on ``grpo-guard worker`` does): its ranks keep
    running while node 0 stops every rank at its next checkpoint, the run ends ``interrupted``
    there, and the next full gang resumes from exactly that step."""
    with backend_env("sqlite", tmp_path) as url:
        env = _gang_world(url, tmp_path, monkeypatch, stale_s="10")
        with workers(env, ["w1", "w2", "w3"], str(tmp_path)) as ws:
            rid = queries.create_run(RunConfig.from_dict({
                "epochs": EPOCHS, "num_steps": NUM_STEPS, "eval_every": EVAL_EVERY, "checkpoint_every": 100,
                "eval_seeds": [0], "num_nodes": 2, "prompts_per_epoch": 2}))
            enqueue_run(rid)
            _wait(lambda: queries.get_run(rid).step >= 6, "the gang did not train", 120, ws)
            first = gangs.members(rid)
            joiner = next(w for w in ws if w.name == first[1].worker_host)
            os.killpg(joiner.proc.pid, signal.SIGTERM)  # the worker and its pool child, not the ranks
            assert joiner.proc.wait(90) == 0, joiner.log()[-3000:]
            assert wait_status(rid, timeout=150, workers_=ws) == "succeeded"
        lines = [ln.message for ln in queries.log_lines(rid, tail=10_000)]
        asked = [m for m in lines if f"node 1's worker ({joiner.name}) is shutting down" in m]
        stopped = [m for m in lines if "interrupted after step" in m]
        assert len(asked) == 1 and len(stopped) == 1, lines[-20:]
        step = int(stopped[0].split("interrupted after step ")[1].split(":")[0])
        assert 6 <= step < EPOCHS and not any("of the gang lost" in m for m in lines), lines[-20:]
        assert any(f"resuming from the checkpoint of step {step}" in m for m in lines), lines[-20:]
        assert [c.step for c in queries.checkpoints(rid)][:1] == [step], "the shutdown's checkpoint, nothing older"
        assert_continuous(rid, EPOCHS, NUM_STEPS, EVAL_EVERY)

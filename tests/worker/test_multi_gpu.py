"""Runs with ``num_gpus`` > 1 in the worker: the worker-owns-several-GPUs syntax, the
``accelerate launch ... -m worker.ranks`` command (captured, no CUDA), failures, and one real
2-rank launch on CPU (gloo) with the real trainer recording to SQLite."""

from __future__ import annotations

import json

import click
import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker.procs import wait_step
from worker.cli import parse_gpus, spawn_worker, worker_command
from worker.tasks import execute_run

TINY = {"backbone": "toy", "group_size": 2, "prompts_per_epoch": 2, "num_steps": 3, "epochs": 2,
        "eval_num_steps": 2, "eval_seeds": [0], "eval_prompts": ["a red circle on a blue background"],
        "lora_rank": 4, "train_batch_size": 2, "sample_batch_size": 2, "checkpoint_every": 1}


@pytest.fixture
def sqlite_store(tmp_path):
    with backend_env("sqlite", tmp_path) as url:
        yield url


def test_a_worker_can_own_several_gpus(monkeypatch):
    assert parse_gpus("0+1,2+3") == ["0+1", "2+3"] and parse_gpus("0+1 2") == ["0+1", "2"]
    for bad in ("0+0", "0+1,1", "0+a"):
        with pytest.raises(click.BadParameter):
            parse_gpus(bad)
    cmd = worker_command("0+1")
    assert cmd[cmd.index("-n") + 1] == "gpu0-1@%h"
    seen = {}

    class FakePopen:
        def __init__(self, argv, env=None, **kw):
            seen.update(argv=argv, env=env)

    monkeypatch.setattr("worker.cli.subprocess.Popen", FakePopen)
    spawn_worker("2+3")
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "2,3" and seen["env"]["GG_WORKER_GPU"] == "2,3"


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _launch_double(calls, results):
    """A LAUNCH_FN that records the argv and writes the given per-rank result files."""

    def launch(cmd, env):
        calls.append(cmd)
        path = cmd[cmd.index("--result") + 1]
        for rank, payload in results.items():
            with open(f"{path}.{rank}", "w", encoding="utf-8") as fh:
                json.dump(payload, fh)
        return 0 if all(p.get("status") != "failed" for p in results.values()) else 1

    return launch


def test_num_gpus_2_launches_accelerate_on_the_workers_gpus(sqlite_store, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("GG_WORKER_GPU", "2,3")
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, {0: {"status": "succeeded"}, 1: {"status": "succeeded"}}))
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "succeeded"
    [cmd] = calls
    from accelerate.commands.launch import launch_command_parser

    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.multi_gpu and args.num_processes == 2 and args.gpu_ids == "2,3" and args.module
    assert args.training_script == "worker.ranks" and args.training_script_args[0] == str(rid)
    lease = args.training_script_args[args.training_script_args.index("--lease") + 1]
    assert lease and args.main_process_port
    assert queries.get_run(rid).status == "succeeded"


def test_a_worker_given_gpu_uuids_launches_on_them(sqlite_store, monkeypatch):
    """Slurm and Kubernetes hand a worker its GPUs as UUIDs; they count and travel to the ranks."""
    uuids = "GPU-8f1c2d3e-0000-1111-2222-333344445555,GPU-9a8b7c6d-0000-1111-2222-333344445555"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuids)
    assert parse_gpus(uuids.replace(",", "+")) == [uuids.replace(",", "+")]
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, {0: {"status": "succeeded"}, 1: {"status": "succeeded"}}))
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "succeeded"
    [cmd] = calls
    assert cmd[cmd.index("--gpu_ids") + 1] == uuids


def test_a_single_gpu_run_is_not_launched(sqlite_store, monkeypatch, fake):
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, {}))
    rid = queries.create_run(RunConfig.from_dict({**TINY}))
    assert execute_run(rid) == "succeeded" and calls == []


def test_too_few_gpus_and_a_failing_rank_fail_the_run_with_a_message(sqlite_store, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GG_WORKER_GPU", "0")
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "failed"
    err = queries.get_run(rid).error
    assert "num_gpus=2" in err and "owns 1" in err and "--gpus 0+1" in err

    monkeypatch.setenv("GG_WORKER_GPU", "0,1")
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(
        calls, {1: {"status": "failed", "error": "ValueError: rank 1 broke", "traceback": "Traceback: rank 1"}}))
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert row.error == "ValueError: rank 1 broke" and "rank 1" in (row.traceback or "")


def test_a_multi_gpu_run_ends_interrupted_or_cancelled_as_rank_0_says_and_nothing_launches_after_a_shutdown(
        sqlite_store, monkeypatch):
    import threading

    from worker import shutdown

    monkeypatch.setenv("GG_WORKER_GPU", "0,1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(shutdown, "interrupt", threading.Event())
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(
        calls, {0: {"status": "cancelled", "step": 1, "interrupted": True}, 1: {"status": "cancelled"}}))
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "interrupted" and queries.get_run(rid).status == "interrupted"

    def users_stop_during_a_shutdown(cmd, env):  # rank 0 saw the user's stop: cancelled, not interrupted
        shutdown.interrupt.set()
        return _launch_double(calls, {0: {"status": "cancelled", "step": 1, "interrupted": False}})(cmd, env)

    monkeypatch.setattr("worker.tasks.LAUNCH_FN", users_stop_during_a_shutdown)
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "cancelled" and queries.get_run(rid).status == "cancelled"

    # the worker is already shutting down when the next run arrives
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    assert execute_run(rid) == "interrupted" and queries.get_run(rid).status == "interrupted"
    assert len(calls) == 2, "no launch after the shutdown began"


def test_a_shutdown_signal_creates_the_launchs_stop_file_or_else_ends_its_group(tmp_path, monkeypatch):
    """The pool child's first SIGINT/SIGTERM during a launch: with a stop file named, it creates it
    and leaves the ranks running (they checkpoint and stop); a launch naming none (worker.gang's)
    has its process group ended, as before."""
    import signal
    import subprocess
    import sys
    import threading

    from worker import shutdown

    group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        monkeypatch.setattr(shutdown, "interrupt", threading.Event())
        monkeypatch.setattr(shutdown, "running", threading.Event())
        shutdown.running.set()
        monkeypatch.setattr(shutdown, "launched", group)
        monkeypatch.setattr(shutdown, "stop_file", str(tmp_path / "result.stop"))
        shutdown.on_signal(signal.SIGINT, None)
        assert (tmp_path / "result.stop").exists() and shutdown.interrupt.is_set() and group.poll() is None

        monkeypatch.setattr(shutdown, "stop_file", None)
        shutdown.on_signal(signal.SIGINT, None)
        assert group.wait(timeout=30) == -signal.SIGTERM
    finally:
        group.kill()
        group.wait()


@pytest.mark.slow
def test_a_real_two_rank_launch_on_cpu_records_once_and_a_shutdown_interrupts_it_for_the_next_worker(
        sqlite_store, monkeypatch):
    """accelerate launch --multi_gpu with 2 processes works on CPU (gloo): the real trainer runs on
    both ranks and rank 0 records. The worker's shutdown signal mid-run stops the ranks together:
    the run ends ``interrupted`` (not ``failed``) with a checkpoint of the epoch it stopped at, and
    the next attempt resumes it to the end: every epoch trained and logged exactly once. (One test,
    so the suite pays for two launches, not three.)"""
    import re
    import signal
    import threading

    from grpo_guard.store import lifecycle
    from worker import shutdown

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for k, v in {"GG_WORKER_GPU": "0,1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    epochs = 3
    rid = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2, "epochs": epochs, "checkpoint_every": 10}))
    monkeypatch.setattr(shutdown, "interrupt", threading.Event())  # this process's shutdown flag, fresh
    out: dict[str, str] = {}
    worker = threading.Thread(target=lambda: out.update(status=execute_run(rid)), daemon=True)
    worker.start()
    wait_step(rid, 1, timeout=120)
    shutdown.on_signal(signal.SIGINT, None)  # what the pool child does on Ctrl-C / SIGTERM
    worker.join(timeout=120)
    row = queries.get_run(rid)
    assert out.get("status") == "interrupted" and row.status == "interrupted", f"{out} {row.status}: {row.error}"
    cut = row.step
    assert 1 <= cut < epochs, f"interrupted at step {cut}: the shutdown came too late to test anything"
    assert [c.step for c in queries.checkpoints(rid) if c.on_disk] == [cut]

    assert lifecycle.requeue_interrupted(rid)
    monkeypatch.setattr(shutdown, "interrupt", threading.Event())  # the next worker
    assert execute_run(rid) == "succeeded", queries.get_run(rid).error
    steps, _ = queries.metric_series(rid, ["reward/total/mean"], max_points=100)["reward/total/mean"]
    assert steps == list(range(1, epochs + 1)), f"trained epochs {steps} (interrupted after {cut})"
    assert [c.step for c in queries.checkpoints(rid)] == [cut, epochs]
    assert queries.sample_steps(rid) == [0, epochs]  # eval_every 5: the base model and the end
    lines = [ln.message for ln in queries.log_lines(rid, tail=10_000)]
    logged = [int(m.group(1)) for msg in lines if (m := re.match(r"epoch (\d+)/", msg))]
    assert sorted(logged) == list(range(1, epochs + 1)), f"an epoch was trained twice or never: {sorted(logged)}"
    assert sum(m.startswith("training ") for m in lines) == 1  # rank 0 alone records (attempt 2: "resumed from")
    assert sum(m.startswith("resumed from ") for m in lines) == 1


def test_multi_gpu_runs_go_to_a_queue_only_big_enough_workers_consume(sqlite_store, monkeypatch):
    from worker import celery_app

    monkeypatch.delenv("GG_QUEUE", raising=False)
    monkeypatch.setenv("GG_GANG_NODES", "0")  # no gang queues (tests/worker/test_gang.py has those)
    assert worker_command("0")[worker_command("0").index("-Q") + 1] == "runs"
    cmd = worker_command("0+1", queue="q")
    assert cmd[cmd.index("-Q") + 1] == "q,q-2gpu"
    sent = []

    class FakeApp:
        def send_task(self, name, args, queue):
            sent.append((args[0], queue))
            return type("R", (), {"id": f"t{args[0]}"})()

    monkeypatch.setattr(celery_app, "get_app", lambda: FakeApp())
    one = queries.create_run(RunConfig.from_dict(TINY))
    two = queries.create_run(RunConfig.from_dict({**TINY, "num_gpus": 2}))
    celery_app.enqueue_run(one)
    celery_app.enqueue_run(two)
    assert sent == [(one, "runs"), (two, "runs-2gpu")]


def test_the_rank_entry_point_records_on_rank_0_and_reports_its_outcome(sqlite_store, fake, monkeypatch, tmp_path):
    """``python -m worker.ranks`` in-process as the only rank, with the trainer double."""
    from grpo_guard.store import lifecycle
    from worker import ranks

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rid = queries.create_run(RunConfig.from_dict({**TINY, "epochs": 2}))
    claim = lifecycle.claim_run(rid, worker_host="test", worker_gpu="0,1")
    result = str(tmp_path / "result")
    assert ranks.main([str(rid), "--lease", claim.lease, "--attempt", "1", "--result", result]) == 0
    assert _read(f"{result}.0") == {"status": "succeeded", "step": 2, "interrupted": False}
    assert queries.get_run(rid).step == 2  # rank 0 recorded through the store

    # The worker's shutdown: the stop file makes rank 0's control report it, and the result says so.
    open(ranks.stop_file(result), "w").close()
    assert ranks.main([str(rid), "--lease", claim.lease, "--attempt", "1", "--result", result]) == 0
    assert _read(f"{result}.0") == {"status": "cancelled", "step": 0, "interrupted": True}

    def broken(*a, **kw):
        raise ValueError("no good")

    monkeypatch.setattr("worker.tasks.TRAIN_FN", broken)
    assert ranks.main([str(rid), "--lease", claim.lease, "--result", result]) == 1
    out = _read(f"{result}.0")
    assert out["status"] == "failed" and out["error"] == "ValueError: no good" and "no good" in out["traceback"]

"""Multi-node runs taken by a gang of workers (``worker.gang``), in-process: the queues, a gang
of two formed by two takers with each node's launch captured, a gang that never completes
giving its run back, and a lost node requeuing the run."""

from __future__ import annotations

import json
import threading

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import gangs, queries
from worker import celery_app
from worker.tasks import execute_run

TWO_NODES = {"backbone": "toy", "group_size": 2, "prompts_per_epoch": 2, "num_steps": 2, "epochs": 2,
             "eval_seeds": [0], "num_nodes": 2}


@pytest.fixture
def world(store, monkeypatch):
    """A CPU worker owning one GPU id, messages captured instead of sent."""
    sent: list[tuple] = []
    monkeypatch.delenv("GG_WORKER_GPU", raising=False)  # a CPU worker: a one-"GPU" node
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GG_WORKER_ADDRESS", "127.0.0.1")
    monkeypatch.setattr(celery_app, "enqueue_run", lambda rid, **kw: sent.append(("run", rid)) or "t")
    monkeypatch.setattr(celery_app, "enqueue_gang_join",
                        lambda rid, gang, **kw: sent.append(("join", rid, gang, kw)) or "t")
    return sent


def test_a_multi_node_run_goes_to_its_gang_queue_which_workers_of_its_size_consume(monkeypatch):
    assert celery_app.run_queue(1, "q", num_nodes=2) == "q-2x1gpu" and celery_app.run_queue(8, "q", 4) == "q-4x8gpu"
    monkeypatch.setenv("GG_GANG_NODES", "2,4")
    assert celery_app.worker_queues(2, "q").split(",") == ["q", "q-2gpu", "q-2x1gpu", "q-2x2gpu", "q-4x1gpu", "q-4x2gpu"]
    monkeypatch.setenv("GG_GANG_NODES", "0")
    assert celery_app.worker_queues(1, "q") == "q"
    monkeypatch.delenv("GG_GANG_NODES")
    assert celery_app.gang_sizes() == list(range(2, 9))
    for bad in ("1-3", "two", "2-99"):
        with pytest.raises(ValueError, match="GG_GANG_NODES"):
            celery_app.gang_sizes(bad)


def test_enqueue_sends_a_multi_node_run_to_its_gang_queue(store, monkeypatch):
    sent = []

    class FakeApp:
        def send_task(self, name, args, queue, kwargs=None):
            sent.append((args[0], queue, kwargs))
            return type("R", (), {"id": "t"})()

    monkeypatch.setattr(celery_app, "get_app", lambda: FakeApp())
    monkeypatch.delenv("GG_QUEUE", raising=False)
    rid = queries.create_run(RunConfig.from_dict({**TWO_NODES, "num_gpus": 2, "prompts_per_epoch": 4}))
    celery_app.enqueue_run(rid)  # a re-send: the stored config gives the shape
    celery_app.enqueue_gang_join(rid, "g1", num_gpus=2, num_nodes=2)
    assert sent == [(rid, "runs-2x2gpu", None), (rid, "runs-2x2gpu", {"gang": "g1"})]


def _launch_double(calls: list, lock: threading.Lock, fail_node: int | None = None):
    """A LAUNCH_FN per node: records the argv and writes this node's rank result; ``fail_node``
    dies without a result, and node 0 then fails as a collective would once that node is lost."""

    def launch(cmd, env):
        node = int(cmd[cmd.index("--machine_rank") + 1])
        result = cmd[cmd.index("--result") + 1]
        rid = int(cmd[cmd.index("worker.ranks") + 1])
        with lock:
            calls.append(cmd)
        if node == fail_node:
            return 1
        if fail_node is not None and node == 0:
            gang = gangs.members(rid)[0]
            assert gang.state == "ready"
            for _ in range(200):  # until the other node reports its loss
                if any(m.state == "lost" for m in gangs.members(rid)):
                    break
                threading.Event().wait(0.05)
            status = {"status": "failed", "error": "RuntimeError: Connection closed by peer"}
        else:
            status = {"status": "succeeded"}
        with open(f"{result}.{node}", "w", encoding="utf-8") as fh:
            json.dump(status, fh)
        return 0 if status["status"] == "succeeded" else 1

    return launch


def _two_takers(rid: int) -> list[str]:
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(execute_run(rid))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_two_takers_form_a_gang_and_each_launches_its_node(world, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, threading.Lock()))
    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "20")
    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    assert sorted(_two_takers(rid)) == ["node-done", "succeeded"]
    assert [s[0] for s in world] == ["join"], "node 0 sent one join message for the one other node"
    from accelerate.commands.launch import launch_command_parser

    args = sorted((launch_command_parser().parse_args(c[3:]) for c in calls), key=lambda a: a.machine_rank)
    assert [a.machine_rank for a in args] == [0, 1]
    assert all(a.num_machines == 2 and a.num_processes == 2 and a.main_process_ip == "127.0.0.1" for a in args)
    assert len({a.main_process_port for a in args}) == 1, "both nodes rendezvous at node 0's published port"
    members = gangs.members(rid)
    assert [(m.node_rank, m.state, m.attempt) for m in members] == [(0, "done", 1), (1, "done", 1)]
    assert queries.get_run(rid).status == "succeeded"


def test_a_gang_that_never_completes_gives_its_run_back_untouched(world, monkeypatch):
    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "1.5")
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", lambda cmd, env: pytest.fail("nothing may launch"))
    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    assert execute_run(rid) == "gang-timeout"
    row = queries.get_run(rid)
    assert (row.status, row.attempt, row.started_at, row.worker_host) == ("queued", 1, None, None)
    assert [m.state for m in gangs.members(rid)] == ["released"]
    (_, _, token, _), again = world[0], world[1]
    assert again == ("run", rid), "the run's message is sent again for the next gang"
    assert execute_run(rid, gang=token) == "skipped", "a join message for a released formation is dropped"
    assert any("gang incomplete" in ln.message for ln in queries.log_lines(rid))


def test_a_lost_node_ends_the_gang_and_requeues_the_run(world, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, threading.Lock(), fail_node=1))
    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "20")
    monkeypatch.setenv("GG_GANG_STALE_S", "5")
    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    assert sorted(_two_takers(rid)) == ["node-lost", "requeued"]
    row = queries.get_run(rid)
    assert (row.status, row.attempt) == ("queued", 2)
    assert world[-1] == ("run", rid)
    assert [m.state for m in gangs.members(rid)] == ["done", "lost"]
    assert any("node(s) [1] of the gang lost" in ln.message for ln in queries.log_lines(rid))


def test_of_two_gangs_forming_for_two_workers_the_younger_gives_way(world, monkeypatch):
    """Two 2-node runs and two free workers: each worker leading one run would wait for ever.
    The leader of the run that began forming second gives its run back and joins the first."""
    calls: list[list[str]] = []
    monkeypatch.setattr("worker.tasks.LAUNCH_FN", _launch_double(calls, threading.Lock()))
    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "20")
    first = queries.create_run(RunConfig.from_dict(TWO_NODES))
    second = queries.create_run(RunConfig.from_dict(TWO_NODES))
    out: list[str] = []
    a = threading.Thread(target=lambda: out.append(execute_run(first)))
    a.start()
    for _ in range(100):
        if gangs.members(first):
            break
        threading.Event().wait(0.05)
    b = threading.Thread(target=lambda: out.append(execute_run(second)))
    b.start()
    a.join(60)
    b.join(60)
    assert sorted(out) == ["node-done", "succeeded"]
    assert queries.get_run(first).status == "succeeded"
    row = queries.get_run(second)
    assert (row.status, row.attempt, row.started_at) == ("queued", 1, None)
    assert [m.state for m in gangs.members(second)] == ["released"]
    assert ("run", second) in world
    assert any("in favour of run" in ln.message for ln in queries.log_lines(second))


def test_a_worker_with_too_few_gpus_for_a_node_fails_the_run_with_how_to_start_one(world, monkeypatch):
    monkeypatch.setenv("GG_WORKER_GPU", "0")
    rid = queries.create_run(RunConfig.from_dict({**TWO_NODES, "num_gpus": 2, "prompts_per_epoch": 4}))
    assert execute_run(rid) == "failed"
    row = queries.get_run(rid)
    assert row.status == "failed" and "num_gpus=2 per node" in row.error and "--gpus 0+1" in row.error
    assert gangs.members(rid) == [] and world == []


def test_the_other_nodes_stop_when_node_0s_attempt_ends_or_a_node_is_lost(world, monkeypatch):
    """Node 0 lost with its worker: the sweep requeues the run (a new attempt), which the other
    nodes' watch sees; a lost peer is seen the same way."""
    from grpo_guard.store import lifecycle
    from worker.gang import _Part

    monkeypatch.setenv("GG_GANG_STALE_S", "60")
    rid = queries.create_run(RunConfig.from_dict({**TWO_NODES, "num_nodes": 3, "prompts_per_epoch": 3}))
    take = dict(gpu=None, address="127.0.0.1", port=1, timeout_s=30)
    lead, one, two = (gangs.take(rid, 3, host=f"w{i}", **take) for i in range(3))
    claim = lifecycle.claim_run(rid, worker_host="w0")
    assert gangs.seal(rid, lead.gang, 3, claim.attempt)
    check = _Part(rid, one, None, ["0"], "w1", None, None)._follower_should_stop(claim.attempt)
    assert check() is None
    gangs.end(rid, two.gang, 2, "lost")
    assert check() == "node(s) [2] lost"
    lost = next(x for x in lifecycle.find_stale(-1) if x.run_id == rid)
    assert lifecycle.recover_lost(lost, action="requeue", reason="w0 stopped heartbeating")
    assert check() == "the run's attempt 1 ended (queued)"


@pytest.mark.slow
def test_a_real_two_node_gang_trains_the_toy_model_and_records_once(tmp_path, monkeypatch):
    """Two takers, accelerate's real multi-node launch on 127.0.0.1 (gloo), the real trainer:
    its collectives span both launches; rank 0 (node 0) records every epoch once."""
    from tests.storehelpers import backend_env

    for k, v in {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GG_WORKER_ADDRESS": "127.0.0.1",
                 "GG_GANG_TIMEOUT_S": "60", "GG_TRAINER": ""}.items():
        monkeypatch.setenv(k, v)
    for k in ("GG_WORKER_GPU", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr("worker.tasks.TRAIN_FN", None)
    monkeypatch.setattr(celery_app, "enqueue_gang_join", lambda *a, **kw: "t")
    tiny = {**TWO_NODES, "num_steps": 3, "eval_num_steps": 2, "eval_prompts": ["a red circle on a blue background"],
            "lora_rank": 4, "train_batch_size": 2, "sample_batch_size": 2, "checkpoint_every": 1}
    with backend_env("sqlite", tmp_path):
        rid = queries.create_run(RunConfig.from_dict(tiny))
        assert sorted(_two_takers(rid)) == ["node-done", "succeeded"], queries.get_run(rid).error
        steps, _ = queries.metric_series(rid, ["reward/total/mean"], max_points=100)["reward/total/mean"]
        assert steps == [1, 2] and [c.step for c in queries.checkpoints(rid)] == [1, 2]
        assert [(m.node_rank, m.state) for m in gangs.members(rid)] == [(0, "done"), (1, "done")]
        lines = [ln.message for ln in queries.log_lines(rid)]
        assert sum("epoch 1/2" in m for m in lines) <= 1 and sum(m.startswith("training ") for m in lines) == 1


def test_a_worker_shut_down_while_its_gang_forms_hands_its_place_on(world, monkeypatch):
    import worker.shutdown

    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "20")
    monkeypatch.setattr(worker.shutdown, "interrupt", threading.Event())
    worker.shutdown.interrupt.set()
    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    assert execute_run(rid) == "interrupted", "node 0 gives the run back at once"
    assert queries.get_run(rid).status == "queued" and world[-1] == ("run", rid)
    lead = gangs.take(rid, 2, host="other", gpu=None, address="127.0.0.1", port=1, timeout_s=20)
    assert execute_run(rid) == "interrupted", "a joiner leaves and sends a join message in its place"
    assert [m.node_rank for m in gangs.members(rid)] == [0]
    assert world[-1][:3] == ("join", rid, lead.gang)
    gangs.release(rid, lead.gang)  # no open formation for the next tests' leaders to give way to


def test_node_0_shut_down_mid_run_leaves_the_run_interrupted_for_the_next_gang(world, monkeypatch):
    """Ctrl-C on node 0's worker: its launcher ends with a signal's exit code after rank 0
    checkpointed and reported ``cancelled``; the run is interrupted (resumed by the next sweep)."""
    import worker.shutdown

    monkeypatch.setenv("GG_GANG_TIMEOUT_S", "20")
    monkeypatch.setattr(worker.shutdown, "interrupt", threading.Event())

    def launch(cmd, env):
        node = int(cmd[cmd.index("--machine_rank") + 1])
        with open(f"{cmd[cmd.index('--result') + 1]}.{node}", "w", encoding="utf-8") as fh:
            json.dump({"status": "cancelled"}, fh)
        if node == 0:
            worker.shutdown.interrupt.set()
            return -15
        return 0

    monkeypatch.setattr("worker.tasks.LAUNCH_FN", launch)
    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    # one process plays both nodes here: node 1 says interrupted too when it ends after node 0's
    # double set the shared shutdown flag, node-done when before
    node_0, node_1 = sorted(_two_takers(rid))
    assert node_0 == "interrupted" and node_1 in ("interrupted", "node-done")
    assert queries.get_run(rid).status == "interrupted"


def test_a_follower_that_reads_the_seal_half_done_still_launches(world, monkeypatch):
    """CI once saw a follower read its own row before node 0's seal and node 0's after it, take
    the formation for released and return gang-timeout, leaving node 0 to wait for it. The
    states are now read in one statement, and a sealed node 0 beside a ``joined`` own row means
    "look again", never "released"."""
    from worker.gang import _Part

    rid = queries.create_run(RunConfig.from_dict(TWO_NODES))
    take = dict(gpu=None, address="127.0.0.1", port=1, timeout_s=30)
    lead, one = (gangs.take(rid, 2, host=f"w{i}", **take) for i in range(2))
    assert gangs.states_of(rid, lead.gang, (1, 0, 7)) == ("joined", "joined", None)
    reads = iter([("joined", "ready")])
    real = gangs.states_of
    monkeypatch.setattr(gangs, "states_of", lambda *a: next(reads, None) or real(*a))
    from grpo_guard.store import lifecycle

    claim = lifecycle.claim_run(rid, worker_host="w0")
    assert gangs.seal(rid, lead.gang, 2, claim.attempt)
    launched: list[str] = []
    monkeypatch.setattr(_Part, "_launch", lambda self, lease, attempt, resume, stop: launched.append(lease)
                        or (0, {}, None))
    assert _Part(rid, one, RunConfig.from_dict(TWO_NODES), ["0"], "w1", None, None).follow() == "node-done"
    assert launched == ["-"]

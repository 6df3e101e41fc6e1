"""The one submit path (worker.submit): rows first, then tasks; an A/B pair is linked and named
by arm; resume and clone enqueue too; a broker that is down leaves the runs queued with a
warning; a bad config or name writes nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

import worker.celery_app
from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.experiments.pairing import ab_configs
from grpo_guard.store import queries
from worker import submit


class Sent(list):
    """Each enqueue as (run id, num_gpus); ``linked`` holds how many runs of its pair existed then."""

    linked: list[int]


@pytest.fixture
def sent(monkeypatch):
    calls = Sent()
    calls.linked = []

    def fake(run_id: int, *, num_gpus: int | None = None) -> str:
        row = queries.get_run(run_id)  # the row must be committed before its task is sent
        calls.append((run_id, num_gpus))
        calls.linked.append(len(queries.pair_runs(row.pair_id)) if row.pair_id else 1)
        return "task"

    monkeypatch.setattr(worker.celery_app, "enqueue_run", fake)
    return calls


@pytest.fixture
def broker_down(monkeypatch):
    def boom(run_id: int, *, num_gpus: int | None = None) -> str:
        raise ConnectionError("broker down")

    monkeypatch.setattr(worker.celery_app, "enqueue_run", boom)


def _count() -> int:
    return len(queries.list_runs(limit=10_000))


def test_a_single_run_is_stored_then_sent_with_its_gpu_count(store, sent):
    cfg = RunConfig.from_dict({"epochs": 3, "num_gpus": 2, "prompts_per_epoch": 2})
    done = submit.submit_runs([("grpo_guard", cfg)], name=" one ", tags=["t1"], notes="hello")
    assert done.warnings == () and done.pair_id is None and sent == [(done.ids[0], 2)]
    run = queries.get_run(done.ids[0])
    assert (run.name, run.tags, run.notes, run.status, run.pair_id) == ("one", ("t1",), "hello", "queued", None)
    assert RunConfig.from_dict(run.config) == cfg


def test_an_unnamed_run_gets_the_stores_default_name(store, sent):
    done = submit.submit_runs([("flow_grpo", RunConfig.from_dict({"algorithm": "flow_grpo"}))])
    assert queries.get_run(done.ids[0]).name == f"flow_grpo-toy-{done.ids[0]}"


def test_an_ab_pair_is_linked_named_by_arm_and_sent_after_both_rows_exist(store, sent):
    parent = submit.submit_runs([("grpo_guard", RunConfig.from_dict({}))]).ids[0]
    done = submit.submit_runs(ab_configs({"epochs": 3, "seed": 9}), name="ab", parent_id=parent)
    a, b = (queries.get_run(i) for i in done.ids)
    assert a.pair_id == b.pair_id == done.pair_id and done.pair_id
    assert (a.algorithm, b.algorithm) == ("flow_grpo", "grpo_guard") and a.config["seed"] == b.config["seed"] == 9
    assert (a.name, b.name) == ("ab [flow_grpo]", "ab [grpo_guard]") and a.parent_id == b.parent_id == parent
    assert sent[-2:] == [(a.id, 1), (b.id, 1)] and sent.linked[-2:] == [2, 2], "no task before both rows exist"
    assert queries.pair_of(a.id) == list(done.ids)


def test_runs_grouped_by_a_callers_link_id_share_it(store, sent):
    link = submit.new_link_id()
    arms = [(f"seed{s}", RunConfig.from_dict({"seed": s})) for s in range(3)]
    done = submit.submit_runs(arms, name="exp", pair_id=link)
    assert done.pair_id == link and [r.id for r in queries.pair_runs(link)] == list(done.ids)
    assert [r.name for r in queries.pair_runs(link)] == ["exp [seed0]", "exp [seed1]", "exp [seed2]"]


def test_a_broker_failure_keeps_the_runs_queued_and_says_so(store, broker_down):
    done = submit.submit_runs(ab_configs({}), name="down")
    assert len(done.ids) == 2 and len(done.warnings) == 2
    for rid, warning in zip(done.ids, done.warnings, strict=True):
        assert "broker down" in warning and f"#{rid}" in warning
        assert queries.get_run(rid).status == "queued", "the stored run is not lost"


def test_shared_training_and_eval_prompts_are_submitted_with_a_warning(store, sent):
    same = ["a red circle on a blue background"]
    done = submit.submit_runs([("grpo_guard", RunConfig.from_dict({"prompts": same, "eval_prompts": same}))])
    assert len(done.ids) == 1 and sent == [(done.ids[0], 1)]
    (warning,) = done.warnings
    assert "1 of the 1 eval prompts are also training prompts" in warning


def test_a_bad_config_or_name_writes_nothing(store, sent):
    before = _count()
    bad = RunConfig.from_dict({"rewards": {"no_such_reward": 1.0}})
    with pytest.raises(ConfigError):
        submit.submit_runs([("grpo_guard", RunConfig.from_dict({})), ("grpo_guard", bad)], name="x")
    with pytest.raises(ValueError, match="at most 200"):
        submit.submit_runs(ab_configs({}), name="n" * 195)
    with pytest.raises(ValueError, match="nothing to submit"):
        submit.submit_runs([])
    assert _count() == before and sent == []


def test_resume_queues_the_run_again_and_sends_it(store, sent):
    rid = submit.submit_runs([("grpo_guard", RunConfig.from_dict({}))]).ids[0]
    queries.request_stop(rid)
    done = submit.resume(rid)
    run = queries.get_run(rid)
    assert done.ids == (rid,) and done.warnings == () and (run.status, run.attempt) == ("queued", 2)
    assert sent[-1] == (rid, None), "resume has only the id: the stored config gives the queue"


def test_resume_with_the_broker_down_warns_and_stays_queued(store, broker_down):
    rid = queries.create_run(RunConfig.from_dict({}))
    queries.request_stop(rid)
    done = submit.resume(rid)
    assert "broker down" in done.warnings[0] and queries.get_run(rid).status == "queued"


def test_clone_creates_a_child_run_with_the_overrides_and_sends_it(store, sent):
    src = submit.submit_runs([("flow_grpo", RunConfig.from_dict({"algorithm": "flow_grpo", "epochs": 4}))],
                             name="src").ids[0]
    done = submit.clone(src, {"epochs": 6})
    child = queries.get_run(done.ids[0])
    assert child.parent_id == src and child.config["epochs"] == 6 and child.name == "src (clone)"
    assert sent[-1] == (child.id, None)
    with pytest.raises(ConfigError):
        submit.clone(src, {"epochs": 0})


def test_enqueue_run_uses_the_given_gpu_count_without_reading_the_stored_config(store, monkeypatch):
    queues = []

    class FakeApp:
        def send_task(self, name, args, queue):
            queues.append(queue)
            return type("Result", (), {"id": "t-1"})()

    def no_read(run_id: int) -> tuple[int, int]:
        raise AssertionError("the caller gave num_gpus; the stored config must not be read back")

    monkeypatch.setattr(worker.celery_app, "get_app", FakeApp)
    monkeypatch.setattr(worker.celery_app, "_shape", no_read)
    rid = queries.create_run(RunConfig.from_dict({"num_gpus": 2, "prompts_per_epoch": 2}))
    assert worker.celery_app.enqueue_run(rid, num_gpus=2) == "t-1"
    assert queues == [worker.celery_app.run_queue(2)] and queries.get_run(rid).task_id == "t-1"

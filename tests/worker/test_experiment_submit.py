"""Experiments through the one submit path (SQLite and PostgreSQL): one call stores the
experiment and all its runs linked to it before any task is sent; a bad experiment writes
nothing; stop and resume act on every run; ``grpo-guard experiment ...`` does the same."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import worker.celery_app
from grpo_guard.cli import main
from grpo_guard.config import ConfigError
from grpo_guard.experiments.config import ExperimentConfig
from grpo_guard.store import queries
from worker.experiment import resume_experiment, stop_experiment, submit_experiment

EXP = """
name: cmp
tags: [exp]
base: {epochs: 2, group_size: 2, prompts_per_epoch: 2}
arms: {flow: {algorithm: flow_grpo}, guard: {algorithm: grpo_guard}}
seeds: [0, 1, 2]
controls: true
"""


@pytest.fixture
def sent(monkeypatch):
    calls: list[tuple[int, int]] = []

    def fake(run_id: int, *, num_gpus: int | None = None) -> str:
        eid = queries.experiment_of(run_id)[0]  # linked when its task is sent
        calls.append((run_id, len(queries.experiment_runs(eid))))
        return "task"

    monkeypatch.setattr(worker.celery_app, "enqueue_run", fake)
    return calls


def test_one_call_stores_every_arm_seed_and_control_then_sends_them(store, sent):
    done = submit_experiment(ExperimentConfig.from_yaml(EXP))
    members = queries.experiment_runs(done.experiment_id)
    assert len(members) == 12 and [m.run.id for m in members] == list(done.runs.ids)
    assert [rid for rid, _ in sent] == list(done.runs.ids) and {n for _, n in sent} == {12}, \
        "every row exists before the first task is sent"
    by = {(m.arm, m.seed): m.run for m in members}
    assert set(by) == {(a, s) for a in ("flow", "flow/control", "guard", "guard/control") for s in (0, 1, 2)}
    run = queries.get_run(by[("guard/control", 1)].id)
    assert run.config["seed"] == 1 and run.config["rewards"]["null_noise"] == 1.0 and run.config["algorithm"] == "grpo_guard"
    assert run.name == "cmp [guard/control seed 1]" and run.tags == ("exp",)
    exp = queries.get_experiment(done.experiment_id)
    assert ExperimentConfig.from_dict(exp.config).expand()[0].config == ExperimentConfig.from_yaml(EXP).expand()[0].config


def test_a_bad_experiment_writes_nothing(store, sent):
    before = (len(queries.list_runs(limit=10_000)), len(queries.list_experiments()))
    with pytest.raises(ConfigError):
        submit_experiment(ExperimentConfig.from_yaml(EXP.replace("{algorithm: grpo_guard}", "{epochs: 0}")))
    long = EXP.replace("name: cmp", "name: " + "n" * 150).replace("guard: {", "g" * 59 + ": {")
    with pytest.raises(ValueError, match="at most 200 characters"):  # "NAME [ggg…/control seed 2]" is too long
        submit_experiment(ExperimentConfig.from_yaml(long))
    assert (len(queries.list_runs(limit=10_000)), len(queries.list_experiments())) == before and not sent


def test_stop_and_resume_act_on_every_run_of_the_experiment(store, sent):
    done = submit_experiment(ExperimentConfig.from_yaml(EXP.replace("seeds: [0, 1, 2]", "seeds: [0]")))
    other = submit_experiment(ExperimentConfig.from_yaml(EXP.replace("seeds: [0, 1, 2]", "seeds: [7]")))
    assert set(stop_experiment(done.experiment_id).values()) == {"cancelled"}
    assert {m.run.status for m in queries.experiment_runs(done.experiment_id)} == {"cancelled"}
    assert {m.run.status for m in queries.experiment_runs(other.experiment_id)} == {"queued"}, "others untouched"
    sent.clear()
    again = resume_experiment(done.experiment_id)
    assert sorted(again.ids) == sorted(done.runs.ids) and sorted(r for r, _ in sent) == sorted(done.runs.ids)
    assert {(m.run.status, m.run.attempt) for m in queries.experiment_runs(done.experiment_id)} == {("queued", 2)}
    assert resume_experiment(done.experiment_id).ids == (), "nothing failed or cancelled: nothing to resume"


def test_the_experiment_commands(store, sent, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(EXP)

    def cli(*args: str, code: int = 0):
        r = CliRunner().invoke(main, ["experiment", *args])
        assert r.exit_code == code, f"{args}: exit {r.exit_code}\n{r.output}\n{r.stderr}"
        return r

    eid = int(cli("submit", str(path), "--seeds", "4", "5", "--set", "epochs=3").stdout.strip())
    members = queries.experiment_runs(eid)
    assert len(members) == 8 and {m.seed for m in members} == {4, 5}
    assert {queries.get_run(m.run.id).config["epochs"] for m in members} == {3}
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["id"] == eid and listed[0]["runs"] == 8 and listed[0]["status"] == "queued"
    shown = cli("show", str(eid)).stdout
    assert "guard/control" in shown and "(+ no-signal controls)" in shown
    assert len(json.loads(cli("show", str(eid), "--json").stdout)["members"]) == 8
    stopped = json.loads(cli("stop", str(eid), "--json").stdout)
    assert set(stopped["runs"].values()) == {"cancelled"} and len(stopped["runs"]) == 8
    assert len(json.loads(cli("resume", str(eid), "--json").stdout)["resumed"]) == 8
    bad = cli("submit", str(path), "--set", "epochs=0", code=2)
    assert "base.epochs" in bad.stderr
    assert "no experiment with id 9999" in cli("show", "9999", code=1).stderr
    assert "integers" in cli("submit", str(path), "--seeds", "x", code=2).stderr


def test_runs_best_prints_the_best_gold_checkpoint_path(store):
    from grpo_guard.config import RunConfig
    from grpo_guard.store.artifacts import checkpoint_location, put_bytes
    from grpo_guard.store.recorder import StoreRecorder

    rid = queries.create_run(RunConfig.from_dict({}))
    r = CliRunner().invoke(main, ["runs", "best", str(rid)])
    assert r.exit_code == 1 and f"run {rid} has no checkpoint yet" in r.stderr
    rec = StoreRecorder(rid)
    for step, meta in ((3, {"best_step": 3}), (6, {"best_step": 3})):
        loc = f"{checkpoint_location(rid)}/ckpt_{step:06d}.pt"
        put_bytes(loc, b"w")
        rec.log_checkpoint(step, queries.artifact_path(loc), meta)
    rec.close()
    r = CliRunner().invoke(main, ["runs", "best", str(rid)])
    assert r.exit_code == 0 and r.stdout.strip().endswith("ckpt_000003.pt")
    other = queries.create_run(RunConfig.from_dict({}))
    rec = StoreRecorder(other)  # a short run whose gold never beat the base model's
    loc = f"{checkpoint_location(other)}/ckpt_000002.pt"
    put_bytes(loc, b"w")
    rec.log_checkpoint(2, queries.artifact_path(loc), {"best_step": 0})
    rec.close()
    r = CliRunner().invoke(main, ["runs", "best", str(other)])
    assert r.exit_code == 1 and "is the base model's own (step 0" in r.stderr, r.stderr
    assert "no run with id 99999" in CliRunner().invoke(main, ["runs", "best", "99999"]).stderr


def test_an_ab_pair_is_stored_as_a_two_arm_one_seed_experiment(store, sent):
    from grpo_guard.config import RunConfig
    from grpo_guard.experiments.pairing import ab_arms
    from worker.experiment import submit_pair

    arms = ab_arms(RunConfig.from_dict({"algorithm": "grpo_guard", "seed": 4, "group_size": 4, "ratio_norm": True}))
    done = submit_pair(arms, name="ab", tags=["p"])
    eid = queries.experiment_of(done.ids[0])[0]
    assert [(m.arm, m.seed, m.run.id) for m in queries.experiment_runs(eid)] == [("flow_grpo", 4, done.ids[0]),
                                                                              ("grpo_guard", 4, done.ids[1])]
    assert queries.get_run(done.ids[0]).pair_id == queries.get_run(done.ids[1]).pair_id == done.pair_id
    exp = ExperimentConfig.from_dict(queries.get_experiment(eid).config)
    assert [r.config for r in exp.expand()] == [c for _, c in arms], "the stored experiment re-creates the pair"

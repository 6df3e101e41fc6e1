"""``grpo-guard submit`` and ``grpo-guard runs ...`` without a worker (messages wait in the
embedded broker under the test's data dir)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.store import lifecycle, queries
from worker.cli import parse_gpus, worker_command


@pytest.fixture
def cli(store, monkeypatch, tmp_path):
    monkeypatch.delenv("GG_BROKER_URL", raising=False)
    monkeypatch.setenv("GG_QUEUE", "cli-tests")

    def run(*args: str, code: int = 0):
        r = CliRunner().invoke(main, list(args))
        assert r.exit_code == code, f"{args}: exit {r.exit_code}\n{r.output}\n{r.stderr}"
        return r

    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_steps: 4\nalgorithm: flow_grpo\n")
    run.cfg = str(cfg)
    return run


def test_submit_prints_the_id_and_queues_the_run(cli):
    r = cli("submit", cli.cfg, "--epochs", "3", "--set", "group_size=4", "--name", "first", "--tag", "x")
    rid = int(r.stdout.strip())
    row = queries.get_run(rid)
    assert row.status == "queued" and row.config["epochs"] == 3 and row.config["group_size"] == 4
    assert row.name == "first" and row.tags == ("x",) and row.task_id and row.enqueued_at


def test_submit_refuses_a_bad_config_without_writing(cli):
    before = len(queries.list_runs())
    r = cli("submit", cli.cfg, "--set", "epochs=0", code=2)
    assert "epochs" in r.stderr
    cli("submit", "/nonexistent.yaml", code=2)
    assert len(queries.list_runs()) == before


def test_submit_ab_queues_a_linked_pair_and_prints_both_ids(cli):
    r = cli("submit", cli.cfg, "--ab", "--set", "seed=5", "--name", "cmp")
    ids = [int(line) for line in r.stdout.split()]
    a, b = (queries.get_run(i) for i in ids)
    assert (a.algorithm, b.algorithm) == ("flow_grpo", "grpo_guard") and a.pair_id and a.pair_id == b.pair_id
    assert (a.name, b.name) == ("cmp [flow_grpo]", "cmp [grpo_guard]") and a.config["seed"] == b.config["seed"] == 5
    assert a.task_id and b.task_id, "both runs are sent"
    dance = [int(line) for line in cli("submit", cli.cfg, "--ab", "--set", "algorithm=dance_grpo_guard").stdout.split()]
    assert [queries.get_run(i).algorithm for i in dance] == ["dance_grpo", "dance_grpo_guard"]


def test_submit_ab_wait_waits_for_both_runs(cli):
    r = cli("submit", cli.cfg, "--ab", "--wait", "--timeout", "0.3", code=1)  # no worker: both stay queued
    ids = [int(line) for line in r.stdout.split()]
    assert len(ids) == 2 and all(f"run {i}: still queued" in r.stderr for i in ids)


def test_submit_with_the_broker_down_warns_and_keeps_the_run_queued(cli, monkeypatch):
    import worker.celery_app

    def boom(run_id, *, num_gpus=None):
        raise ConnectionError("broker down")

    monkeypatch.setattr(worker.celery_app, "enqueue_run", boom)
    r = cli("submit", cli.cfg)
    rid = int(r.stdout)
    assert "warning:" in r.stderr and "broker down" in r.stderr and queries.get_run(rid).status == "queued"


def test_runs_list_show_stop_resume_clone(cli):
    rid = int(cli("submit", cli.cfg, "--epochs", "5", "--tag", "cli").stdout)
    listed = json.loads(cli("runs", "list", "--tag", "cli", "--json").stdout)
    assert [r["id"] for r in listed] == [rid] and listed[0]["status"] == "queued"
    assert str(rid) in cli("runs", "list").stdout

    shown = json.loads(cli("runs", "show", str(rid), "--json").stdout)
    assert shown["config"]["epochs"] == 5 and shown["checkpoints"] == []
    shown = cli("runs", "show", str(rid)).stdout
    assert "status     queued" in shown and "step 0/5; no step stored yet" in shown

    assert json.loads(cli("runs", "stop", str(rid), "--json").stdout)["status"] == "cancelled"
    resumed = json.loads(cli("runs", "resume", str(rid), "--json").stdout)
    assert resumed == {"id": rid, "status": "queued", "attempt": 2}

    clone = json.loads(cli("runs", "clone", str(rid), "--set", "algorithm=grpo_guard", "--epochs", "7", "--json").stdout)
    row = queries.get_run(clone["id"])
    assert row.parent_id == rid and row.config["algorithm"] == "grpo_guard" and row.config["epochs"] == 7

    claim = lifecycle.claim_run(rid, worker_host="h")
    cli("runs", "resume", str(rid), code=1)  # running: not resumable, one clean line
    lifecycle.finish_run(rid, claim.lease, "failed", error="E: boom", traceback="Traceback (most recent call last)\n  x")
    out = cli("runs", "show", str(rid)).stdout
    assert "error      E: boom" in out and "traceback" in out
    assert "attempt 2 ended: failed" in cli("runs", "logs", str(rid)).stdout
    cli("runs", "delete", str(clone["id"]), "--yes")
    cli("runs", "show", str(clone["id"]), code=1)
    cli("runs", "show", "999999", code=1)


def test_runs_sweep_reports_nothing_to_do(cli):
    assert cli("runs", "sweep", "--json").stdout.strip().startswith("[")


def test_worker_command_line_follows_the_one_process_per_gpu_rule():
    assert parse_gpus(None) == [None] and parse_gpus("0,1") == ["0", "1"] and parse_gpus("2 3") == ["2", "3"]
    for bad in ("a", "0,0", "GPU-", "GPU-a,GPU-a"):
        with pytest.raises(click.BadParameter):
            parse_gpus(bad)
    cmd = worker_command("1", queue="q")
    assert cmd[cmd.index("-n") + 1] == "gpu1@%h" and "--max-tasks-per-child=1" in cmd
    assert cmd[cmd.index("-c") + 1] == "1" and cmd[cmd.index("-P") + 1] == "prefork"
    queues = cmd[cmd.index("-Q") + 1].split(",")  # one-GPU runs, and its node of 2..8-node gangs
    assert queues == ["q", *(f"q-{n}x1gpu" for n in range(2, 9))]


STORE_COMMANDS = [("submit",), ("worker",), ("db", "upgrade"), ("db", "current")] + [
    ("runs", c) for c in ("list", "show", "stop", "resume", "clone", "sweep", "logs", "delete", "best")] + [
    ("experiment", c) for c in ("submit", "list", "show", "stop", "resume", "report")]


@pytest.mark.parametrize("path", STORE_COMMANDS, ids=" ".join)
def test_every_store_command_takes_data_dir(path):
    cmd = main
    for name in path:
        cmd = cmd.get_command(click.Context(cmd), name)
    assert "--data-dir" in [o for p in cmd.params for o in p.opts], f"grpo-guard {' '.join(path)} has no --data-dir"


def test_data_dir_reaches_the_store_and_a_read_without_a_store_says_where_it_looked(monkeypatch, tmp_path):
    # the callback sets GG_DATA_DIR; monkeypatch owning the variable restores it after the test
    monkeypatch.setenv("GG_DATA_DIR", str(tmp_path / "cwd-default"))
    monkeypatch.delenv("GG_DATABASE_URL", raising=False)
    monkeypatch.delenv("GG_BROKER_URL", raising=False)
    monkeypatch.setenv("GG_QUEUE", "cli-tests")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("num_steps: 4\nalgorithm: flow_grpo\n")
    served = tmp_path / "served"

    r = CliRunner().invoke(main, ["runs", "list", "--data-dir", str(served)])
    assert r.exit_code == 1 and str(served / "grpo-guard.db") in r.stderr and "Traceback" not in r.output
    assert not served.exists(), "a read must not create an empty store"

    r = CliRunner().invoke(main, ["submit", str(cfg), "--data-dir", str(served), "--name", "there"])
    assert r.exit_code == 0, r.output + r.stderr
    rid = int(r.stdout.strip())
    r = CliRunner().invoke(main, ["runs", "list", "--json", "--data-dir", str(served)])
    assert r.exit_code == 0 and [row["id"] for row in json.loads(r.stdout)] == [rid]
    r = CliRunner().invoke(main, ["runs", "show", str(rid), "--data-dir", str(served)])
    assert r.exit_code == 0 and "there" in r.stdout

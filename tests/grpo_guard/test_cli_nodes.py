"""``grpo-guard train --nnodes/--node-rank/--master`` and the Slurm defaults: the node plan,
Slurm's compact host lists, one-sentence errors, ``--dry-run``, and examples/slurm/train.sbatch
run with a fake ``srun`` (no cluster here)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from grpo_guard.cli import main, nodes
from grpo_guard.cli.nodes import NodeError, NodePlan, expand_hostlist, parse_master, resolve_nodes

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "examples" / "slurm" / "train.sbatch"
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("spec, hosts", [
    ("node1", ["node1"]),
    ("node1,node2", ["node1", "node2"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[08-10],login", ["gpu08", "gpu09", "gpu10", "login"]),
    ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
    ("a[9-11]b", ["a9b", "a10b", "a11b"]),
])
def test_slurm_host_lists_expand_in_order(spec, hosts):
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["gpu[01-03", "gpu01]", "gpu[a-b]", "gpu[5-3]"])
def test_a_malformed_host_list_is_one_sentence(spec):
    with pytest.raises(NodeError, match=r"Slurm node list.*\.$"):
        expand_hostlist(spec)


def test_the_first_host_comes_from_scontrol_when_it_is_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(nodes.shutil, "which", lambda name: None)
    assert nodes.first_slurm_host("gpu[07-08]") == "gpu07"
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho fromscontrol1; echo fromscontrol2\n")
    fake.chmod(0o755)
    monkeypatch.setattr(nodes.shutil, "which", lambda name: str(fake))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nodes.first_slurm_host("gpu[07-08]") == "fromscontrol1"


@pytest.mark.parametrize("text, want", [("10.0.0.1:29500", ("10.0.0.1", 29500)), ("gpu07:1", ("gpu07", 1)),
                                        ("[fe80::1]:65535", ("fe80::1", 65535))])
def test_master_is_host_and_port(text, want):
    assert parse_master(text) == want


@pytest.mark.parametrize("text, match", [("10.0.0.1", "HOST:PORT"), (":29500", "HOST:PORT"), ("h:x", "HOST:PORT"),
                                         ("h:0", "between 1 and 65535"), ("h:65536", "between 1 and 65535")])
def test_a_bad_master_is_one_sentence(text, match):
    with pytest.raises(NodeError, match=match):
        parse_master(text)


def test_flags_and_slurm_and_config_give_the_plan():
    assert resolve_nodes(1, False, env={}) == NodePlan(1, 0, None, None, "flags")
    assert resolve_nodes(1, False, 2, 1, "h:5", env={}) == NodePlan(2, 1, "h", 5, "flags")
    assert resolve_nodes(2, True, node_rank=1, master="h:5", env={}).nnodes == 2  # the config's num_nodes
    # Under Slurm every value comes from its variables; MASTER_PORT, MASTER_ADDR are honoured.
    assert resolve_nodes(1, False, env=SLURM) == NodePlan(2, 1, "gpu07", 29500, "slurm")
    assert resolve_nodes(1, False, env={**SLURM, "MASTER_PORT": "4000"}).master_port == 4000
    assert resolve_nodes(1, False, env={**SLURM, "MASTER_ADDR": "10.1.1.1"}).master_addr == "10.1.1.1"
    old_slurm = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"} | {"SLURM_NODELIST": "n[3-4]"}
    assert resolve_nodes(1, False, env=old_slurm).master_addr == "n3"
    # Explicit flags win over Slurm.
    assert resolve_nodes(1, False, 3, 2, "m:7", env=SLURM) == NodePlan(3, 2, "m", 7, "flags")
    # One Slurm node: nothing to meet, no master needed.
    assert resolve_nodes(1, False, env={**SLURM, "SLURM_NNODES": "1", "SLURM_NODEID": "0"}).master_addr is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(nnodes=2, node_rank=2, master="h:1"), "--node-rank must be between 0 and 1 for 2 node"),
    (dict(nnodes=2, node_rank=-1, master="h:1"), "--node-rank must be between 0 and 1"),
    (dict(nnodes=0), "--nnodes must be at least 1"),
    (dict(nnodes=2, node_rank=0), "needs --master HOST:PORT"),
    (dict(config_num_nodes=3, config_sets_num_nodes=True, nnodes=2, master="h:1"), "config says num_nodes: 3 but --nnodes is 2"),
])
def test_bad_node_settings_are_one_sentence(kwargs, match):
    args = dict(config_num_nodes=1, config_sets_num_nodes=False) | kwargs
    with pytest.raises(NodeError, match=match) as info:
        resolve_nodes(env={}, **args)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_slurm_nodes_must_agree_with_a_config_that_sets_num_nodes():
    with pytest.raises(NodeError, match="config says num_nodes: 4 but SLURM_NNODES is 2"):
        resolve_nodes(4, True, env=SLURM)
    with pytest.raises(NodeError, match="SLURM_NNODES must be a whole number"):
        resolve_nodes(1, False, env={**SLURM, "SLURM_NNODES": "two"})


@pytest.fixture
def toy_config(tmp_path, monkeypatch):
    for key in (*SLURM, "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"backbone": "toy", "num_gpus": 2, "prompts_per_epoch": 8}))
    return str(path)


def _launch_args(line: str):
    """The accelerate arguments of a printed launch command, parsed by accelerate's own parser."""
    from accelerate.commands.launch import launch_command_parser

    argv = shlex.split(line)
    assert argv[1:3] == ["-m", "accelerate.commands.launch"], line
    return launch_command_parser().parse_args(argv[3:])


def test_dry_run_prints_this_nodes_multi_node_launch(toy_config):
    res = CliRunner().invoke(main, ["train", toy_config, "--nnodes", "2", "--node-rank", "1",
                                    "--master", "10.0.0.1:29555", "--out", "runs/x", "--dry-run"])
    assert res.exit_code == 0, res.output
    args = _launch_args(res.output.strip())
    assert (args.num_processes, args.num_machines, args.machine_rank) == (4, 2, 1)
    assert (args.main_process_ip, args.main_process_port, args.gpu_ids) == ("10.0.0.1", 29555, "0,1")
    # The ranks learn num_nodes from --set (the config left it out), and write to the same --out.
    assert args.training_script_args[:6] == ["train", toy_config, "--set", "num_nodes=2", "--out", "runs/x"]
    assert args.module and args.training_script == "grpo_guard.cli"


def test_dry_run_of_a_single_process_prints_the_plain_command(toy_config):
    res = CliRunner().invoke(main, ["train", toy_config, "--set", "num_gpus=1", "--out", "o", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert shlex.split(res.output.strip())[1:] == ["-m", "grpo_guard.cli", "train", toy_config, "--set", "num_gpus=1",
                                                   "--out", "o"]


def test_bad_node_flags_stop_before_anything_starts(toy_config, tmp_path):
    out = tmp_path / "never"
    for extra, message in ((["--nnodes", "2"], "needs --master HOST:PORT"),
                           (["--nnodes", "2", "--node-rank", "5", "--master", "h:1"], "--node-rank must be between 0 and 1"),
                           (["--nnodes", "2", "--master", "h"], "--master must be HOST:PORT"),
                           (["--nnodes", "2", "--set", "num_nodes=3", "--master", "h:1"], "config says num_nodes: 3")):
        res = CliRunner().invoke(main, ["train", toy_config, "--out", str(out), *extra])
        assert res.exit_code == 2 and message in res.output, res.output
        assert "Traceback" not in res.output and not out.exists()


def test_the_sbatch_script_is_bash_and_runs_our_cli_on_every_node(tmp_path):
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its options, run the command once per node with that node's SLURM_NODEID.
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\n'
                                  'for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i "$@" || exit $?; done\n')
    # grpo-guard: the real CLI, printing the launch instead of running it.
    (bin_dir / "grpo-guard").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m grpo_guard.cli "$@" --dry-run\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "CUDA_VISIBLE"))}
    env.update(SLURM, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(SBATCH)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    for node, line in enumerate(lines):
        args = _launch_args(line)
        assert (args.num_processes, args.num_machines, args.machine_rank) == (16, 2, node)
        assert args.main_process_ip == "gpu07" and args.main_process_port == 20000 + 4242
        assert args.gpu_ids == ",".join(map(str, range(8)))
        tail = args.training_script_args
        assert tail[:2] == ["train", "examples/sd35m_grpo_guard.yaml"] and "num_gpus=8" in tail and "num_nodes=2" in tail
        assert tail[tail.index("--out") + 1] == "runs/slurm-4242"


def test_the_sbatch_scripts_usr1_asks_rank_0_for_a_clean_stop(tmp_path):
    """Slurm's `--signal=B:USR1` before the time limit reaches the batch script, which creates the
    stop file node 0's `grpo-guard train` watches, and waits on for srun's own exit status."""
    import signal
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "started"
    # srun: the job step, standing in for node 0's launcher: it waits for the stop file, then
    # ends as a cleanly stopped run does.
    (bin_dir / "srun").write_text(f'#!/bin/bash\ntouch {shlex.quote(str(started))}\n'
                                  'for ((i = 0; i < 300; i++)); do [ -e "$OUT/.stop-requested" ] && exit 0; sleep 0.1; done\n'
                                  'exit 3\n')
    (bin_dir / "srun").chmod(0o755)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(SLURM, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", OUT=str(out))
    proc = subprocess.Popen(["bash", str(SBATCH)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for _ in range(200):
            if started.exists():
                break
            time.sleep(0.05)
        assert started.exists(), "the script never started srun"
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (out / ".stop-requested").exists()

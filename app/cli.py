"""``grpo-guard serve``: the web UI, plus an embedded training worker on the laptop default.

Registered lazily in ``grpo_guard.cli.LAZY_COMMANDS`` so ``grpo-guard --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import click


def _start_embedded_worker() -> subprocess.Popen | None:
    """One worker process on the default device, sharing this process's environment (data
    dir, database, the embedded filesystem broker)."""
    from worker.cli import spawn_worker

    return spawn_worker(None, loglevel="warning", name="embedded@%h")


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # Celery warm shutdown: the trainer checkpoints first
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback requires GG_AUTH or GG_AUTH_FILE.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--worker/--no-worker", "with_worker", default=None,
              help="Start an embedded training worker. Default: yes when GG_BROKER_URL is unset "
                   "(the embedded broker), no when a broker is configured (run `grpo-guard worker` per GPU).")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Data directory (SQLite file, embedded broker, artifacts); sets GG_DATA_DIR.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(host: str, port: int, with_worker: bool | None, data_dir: str | None, log_level: str) -> None:
    """Start the GRPO-Guard Studio web UI on http://HOST:PORT/ (health check: /health)."""
    if data_dir:
        os.environ["GG_DATA_DIR"] = os.path.abspath(data_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.main import AuthConfigError, auth_credentials, check_bind

    try:  # refuse early, before any slow import or a worker is started
        check_bind(host, auth_credentials())
    except AuthConfigError as e:
        raise click.ClickException(str(e)) from None

    from grpo_guard.store.db import StoreError

    if with_worker is None:
        with_worker = not os.environ.get("GG_BROKER_URL", "").strip()
    proc = None
    try:
        from app.main import create_app

        app = create_app(host=host, port=port)
        if with_worker:
            proc = _start_embedded_worker()
            click.echo(f"embedded worker pid {proc.pid} (stop with Ctrl-C; --no-worker to skip)", err=True)
        import uvicorn

        click.echo(f"GRPO-Guard Studio on http://{host}:{port}/", err=True)

        def _term(_signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _term)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    except (AuthConfigError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
    finally:
        _stop(proc)
    sys.exit(0)

"""``grpo-guard serve``: the web UI, plus an embedded training worker on the laptop default.

Registered lazily in ``grpo_guard.cli.LAZY_COMMANDS`` so ``grpo-guard --help`` stays instant.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import click

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served (one sentence), else None: a trial bind, as uvicorn
    would do it, before anything slow starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot serve on {host}:{port}: the host name does not resolve ({e.strerror})."
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another grpo-guard serve?); "
                        f"stop it or pick another port with --port.")
            if e.errno == errno.EACCES:
                return f"no permission to bind port {port} on {host}; pick a port above 1023 with --port."
            return f"cannot serve on {host}:{port}: {e.strerror}."
    return None


def has_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU, without importing torch (which would cost the
    UI its fast start)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def embedded_plan(cores: int | None = None, *, workers: int | None = None, gpu: bool | None = None
                  ) -> list[int]:
    """Torch threads of each embedded worker process. On a CPU machine with two or more cores,
    two workers (the toy A/B pair's arms run side by side), the cores split between them so
    the runs do not oversubscribe them (default threading made toy epochs several times
    slower on a busy 2-core machine); with a GPU, or one core, one worker. ``workers``
    overrides the count."""
    from grpo_guard.training.cpu import owned_cores  # torch-free

    cores = max(1, cores or owned_cores())  # the cores this process may use (affinity, cgroup quota)
    gpu = has_gpu() if gpu is None else gpu
    n = workers if workers is not None else (1 if gpu or cores < 2 else 2)
    n = max(1, n)
    base, extra = divmod(cores, n)
    return [max(1, base + (1 if i < extra else 0)) for i in range(n)]


def embedded_thread_env(share: int, cores: int | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The thread variables of one embedded worker whose share of the cores is ``share``. Where
    the thread governor can act (grpo_guard/training/threads.py: CPU tuning on, no thread count
    the user fixed), every core is the worker's ceiling and the governor shares them: a run alone
    uses them all, two runs settle on their shares; otherwise the share is fixed."""
    from grpo_guard.training import cpu  # torch-free

    env = dict(os.environ if env is None else env)
    if share >= 1 and cpu.governor_allowed(env):
        ceiling = str(max(share, cores or cpu.owned_cores()))
        return {**dict.fromkeys(THREAD_VARS, ceiling), cpu.THREADS_FROM_QUOTA: ceiling}
    return dict.fromkeys(THREAD_VARS, str(share))


def _start_embedded_workers(threads: list[int], log_file: Any = None) -> list[subprocess.Popen]:
    """One worker process per entry of ``threads`` on the default device, sharing this
    process's environment (data dir, database, the embedded filesystem broker); each one's
    torch (and BLAS) uses its own share of the cores, and each imports the trainer before the
    first run arrives (``worker.tasks.preload_trainer``). Celery's own output (banner, warnings)
    goes to ``log_file`` (None: this terminal)."""
    from worker.cli import spawn_worker, supervised_popen

    out = {} if log_file is None else {"stdout": log_file, "stderr": subprocess.STDOUT}
    procs = []
    for i, n in enumerate(threads):
        env = {**os.environ, **embedded_thread_env(n, sum(threads)), "GG_WORKER_PRELOAD": "1"}
        procs.append(spawn_worker(None, loglevel="warning", name=f"embedded{i + 1}@%h", env=env,
                                  **supervised_popen(), **out))
    return procs


def _stop(procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Wait for the workers' warm stop (each trainer checkpoints in parallel), then force it."""
    from worker.cli import stop_workers

    stop_workers(procs, timeout)


def _interrupted_summary() -> str | None:
    """The runs a shutdown left interrupted, as "#3 at step 12/30, ...", or None."""
    from grpo_guard.store import queries

    try:
        rows = queries.list_runs(status="interrupted", limit=50)
    except Exception:  # the store itself may be what is failing; the shutdown goes on
        return None
    if not rows:
        return None
    return ", ".join(f"#{r.id} at step {r.step}/{r.total}" for r in rows)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback requires GG_AUTH or GG_AUTH_FILE.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--worker/--no-worker", "with_worker", default=None,
              help="Start embedded training workers. Default: yes when GG_BROKER_URL is unset "
                   "(the embedded broker), no when a broker is configured (run `grpo-guard worker` per GPU).")
@click.option("--workers", "n_workers", default=None, type=click.IntRange(1, 64),
              help="Embedded worker processes (runs side by side), the CPU cores split between them. "
                   "Default: 2 on a CPU machine with 2+ cores (an A/B pair at once), else 1.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Data directory (SQLite file, embedded broker, artifacts); sets GG_DATA_DIR.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(host: str, port: int, with_worker: bool | None, n_workers: int | None, data_dir: str | None,
              log_level: str) -> None:
    """Start the GRPO-Guard Studio web UI on http://HOST:PORT/ (health check: /health)."""
    problem = port_problem(host, port)
    if problem:  # at once: not after the UI and a worker have started
        raise click.ClickException(problem)
    if data_dir:
        os.environ["GG_DATA_DIR"] = os.path.abspath(data_dir)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    atexit.register(_exit_without_teardown)  # before the UI's imports register theirs, so it runs after them
    from app.main import AuthConfigError, auth_credentials, check_bind

    try:  # refuse early, before any slow import or a worker is started
        check_bind(host, auth_credentials())
    except AuthConfigError as e:
        raise click.ClickException(str(e)) from None

    from grpo_guard.store.db import StoreError, data_dir

    if with_worker is None:
        with_worker = not os.environ.get("GG_BROKER_URL", "").strip()
    procs: list[subprocess.Popen] = []
    log_file = None
    stopping: list[int] = []

    def stop_now(sig: int) -> None:
        """On the first Ctrl-C / SIGTERM, at once (not after the web server has wound down): every
        worker checkpoints its run; on the next, they stop cold."""
        from worker.cli import signal_workers

        stopping.append(sig)
        if procs and len(stopping) == 1:
            click.echo("stopping: running runs checkpoint and end interrupted (Ctrl-C again to stop at once)",
                       err=True)
        signal_workers(procs, signal.SIGTERM if len(stopping) == 1 else signal.SIGQUIT)

    try:
        import uvicorn

        from app.main import create_app

        app = create_app(host=host, port=port)
        if with_worker:
            threads = embedded_plan(workers=n_workers)
            if log_level != "debug":  # Celery's banners and warnings: the log, not this terminal
                log_dir = os.path.join(data_dir(), "logs")
                os.makedirs(log_dir, exist_ok=True)
                log_file = open(os.path.join(log_dir, "workers.log"), "ab")  # noqa: SIM115 (closed below)
            waiting = _interrupted_summary()
            procs = _start_embedded_workers(threads, log_file)
            ceiling = embedded_thread_env(threads[0], sum(threads))["OMP_NUM_THREADS"]
            share = (f"torch threads {'+'.join(map(str, threads))}" if ceiling == str(threads[0])
                     else f"up to {ceiling} torch threads each (the thread governor shares the cores)")
            click.echo(f"{len(procs)} embedded worker(s), {share} "
                       f"(stop with Ctrl-C; --no-worker to skip)"
                       + (f"; their log: {log_file.name}" if log_file else ""), err=True)
            if waiting:
                click.echo(f"resuming the runs a shutdown interrupted: {waiting}", err=True)

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                stop_now(sig)
                super().handle_exit(sig, frame)

        click.echo(f"GRPO-Guard Studio on http://{host}:{port}/", err=True)

        def _term(_signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _term)
        # open browser tabs hold streaming connections: wait for them briefly, not forever
        Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)).run()
    except (AuthConfigError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
    finally:
        if procs:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C escalates, never aborts the wait
                signal.signal(sig, lambda signum, _frame: stop_now(signum))
            if not stopping:
                stop_now(signal.SIGTERM)
            _stop(procs)
            summary = _interrupted_summary()
            if summary:
                click.echo(f"interrupted, with a checkpoint: {summary}; they resume when `grpo-guard serve` "
                           "or a worker starts again", err=True)
        if log_file is not None:
            log_file.close()
    _clean_end.append(True)
    sys.exit(0)


_clean_end: list[bool] = []


def _exit_without_teardown() -> None:
    """After a clean end of ``serve`` and the atexit handlers of what the UI imported: leave
    without the interpreter's teardown of the ~2,500 modules it imports (1-2 s of a Ctrl-C on a
    busy machine, and nothing left to save: the workers have stopped, the store is committed)."""
    if not _clean_end:
        return
    logging.shutdown()  # registered before this handler, so it would run after it
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)

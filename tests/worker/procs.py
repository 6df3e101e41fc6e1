"""Real worker processes for the end-to-end tests (STACK.md C11): ``grpo-guard``'s own
``spawn_worker`` in a new session, so a test can SIGKILL the whole process group."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

from grpo_guard.store import queries
from tests.storehelpers import REDIS_URL
from worker.cli import spawn_worker

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def world_env(url: str, data_dir: str, broker: str, queue: str | None = None, **extra: str) -> dict[str, str]:
    """The environment a worker and the test share: store, artifacts, broker, the trainer double."""
    env = {
        "GG_DATA_DIR": data_dir, "GG_ARTIFACTS": os.path.join(data_dir, "artifacts"), "GG_DATABASE_URL": url,
        "GG_QUEUE": queue or "t-" + uuid.uuid4().hex[:8], "GG_TRAINER": "tests.worker.fake_trainer:train",
        "GG_FAKE_STEP_SECONDS": "0.05", "GG_HEARTBEAT_SECONDS": "0.5", "GG_STALE_AFTER": "3",
        "GG_SWEEP_INTERVAL": "1", "GG_RESEND_QUEUED_AFTER": "0", "GG_BROKER_URL": "",
    }
    if broker == "redis":
        require_redis()
        env["GG_BROKER_URL"] = REDIS_URL
    elif broker.startswith("redis://"):
        env["GG_BROKER_URL"] = broker
    env.update(extra)
    return env


def require_redis(url: str = REDIS_URL) -> None:
    """Fail clearly (not hang) when the shared Redis server is down."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as e:
        import pytest

        pytest.fail(f"Redis is not reachable at {url} ({e}); run `bash scripts/services.sh`")


class Worker:
    """One ``celery worker`` process group with its log file."""

    def __init__(self, env: dict[str, str], name: str, log_dir: str) -> None:
        self.name = name
        self.log_path = os.path.join(log_dir, f"worker-{name}-{uuid.uuid4().hex[:6]}.log")
        full = {**os.environ, **env, "GG_WORKER_NAME": name,
                "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = spawn_worker(name=f"{name}@%h", env=full, stdout=self._log, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=REPO)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def wait_ready(self, timeout: float = 90) -> Worker:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def _exited_unreaped(self) -> bool:
        """True once the group leader has exited; it is left a zombie (not reaped), so its
        process-group id cannot be reused by an unrelated process while we still signal it."""
        if self.proc.returncode is not None:
            return True
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _signal_group(self, sig: int) -> None:
        if self.proc.returncode is None:  # never signal a group whose leader was already reaped
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crash would."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while not self._exited_unreaped() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._signal_group(signal.SIGKILL)  # children left behind, or a worker that would not stop
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def workers(env: dict[str, str], names: list[str], log_dir: str) -> Iterator[list[Worker]]:
    ws: list[Worker] = []
    try:
        ws = [Worker(env, n, log_dir) for n in names]
        for w in ws:
            w.wait_ready()
        yield ws
    finally:
        for w in ws:
            w.stop()


def wait_status(run_id: int, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                timeout: float = 90, workers_: list[Worker] | None = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        row = queries.get_run(run_id)
        if row.status in statuses:
            return row.status
        if time.monotonic() > deadline:
            logs = "\n".join(w.log()[-2000:] for w in workers_ or [])
            raise AssertionError(f"run {run_id} is {row.status} at step {row.step} after {timeout}s\n{logs}")
        time.sleep(0.1)


def wait_step(run_id: int, step: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        row = queries.get_run(run_id)
        if row.step >= step:
            return row.step
        assert row.status in ("queued", "running"), f"run {run_id} ended early: {row.status} {row.error}"
        assert time.monotonic() < deadline, f"run {run_id} did not reach step {step}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on a free port, so it can be restarted without disturbing the
    shared one on 6379."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/install.sh installs it)"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def clear_redis_queue(queue: str, url: str = REDIS_URL) -> None:
    """Remove what kombu left for ``queue`` on the shared Redis (tests leave no junk)."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        for key in r.scan_iter(match=f"*{queue}*"):
            r.delete(key)
    finally:
        r.close()

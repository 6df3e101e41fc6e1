"""Shared helpers of the hardening suite: the bad-config corpus, store snapshots, an in-process
app server on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import yaml

# Every store-touching test runs on both databases (the PostgreSQL leg carries its marker).
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_configs")


def corpus() -> list[tuple[str, str]]:
    """(file path, expected field) for every bad config; '' = the config as a whole."""
    with open(os.path.join(CORPUS_DIR, "index.yaml"), encoding="utf-8") as fh:
        index = yaml.safe_load(fh)["expected_field"]
    files = sorted(f for f in os.listdir(CORPUS_DIR) if f.endswith(".yaml") and f != "index.yaml")
    assert sorted(index) == files, "every corpus file needs an expected_field entry in index.yaml (and only those)"
    return [(os.path.join(CORPUS_DIR, f), index[f]) for f in files]


def names_field(errors: list[tuple[str, str]], field: str) -> bool:
    """True when one of the (key, message) errors is about ``field`` ('rewards.x' counts as
    'rewards'; '' means a general error)."""
    return any(k.split(".", 1)[0] == field for k, _ in errors)


def snapshot() -> dict[str, list[tuple]]:
    """Every row of every table of the current store (and the artifact files), for
    byte-for-byte before/after comparisons on SQLite and PostgreSQL alike."""
    from sqlalchemy import MetaData, select

    from grpo_guard.store import db

    eng = db.get_engine()
    meta = MetaData()
    meta.reflect(eng)
    out: dict[str, list[tuple]] = {}
    with eng.connect() as c:
        for name, table in sorted(meta.tables.items()):
            cols = list(table.columns)
            out[name] = sorted(tuple(repr(v) for v in row) for row in c.execute(select(*cols)))
    root = db.artifacts_root()
    files = []
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                files.append((os.path.relpath(p, root), fh.read()))
    out["__artifacts__"] = sorted(files)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(host: str = "127.0.0.1") -> Iterator[str]:
    """``app.main.create_app`` under uvicorn in a thread; yields the base URL."""
    import uvicorn

    from app.main import create_app

    port = free_port()
    app = create_app(host=host, port=port)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the app did not start within 60 s"
        assert t.is_alive(), "the app server thread died"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


# ---- hostile input (issue 14) ----------------------------------------------------------------
def alias_bomb(field: str = "epochs", width: int = 9, levels: int = 9) -> str:
    """A billion-laughs document: ``width ** levels`` nodes after alias expansion, all inside
    ``field``'s value, in a few hundred bytes."""
    lines = [f"  - &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return f"{field}:\n" + "\n".join(lines) + "\n"


def deep_nesting(field: str = "epochs", depth: int = 20_000) -> str:
    return f"{field}: " + "[" * depth + "]" * depth + "\n"


# Thread CPU of `_reference_work` on this project's quiet 2-core machine (2026-12-07: 0.18-0.22 s).
REFERENCE_WORK_S = 0.18


def _reference_work() -> int:
    d = {}
    for i in range(200_000):  # object churn like a config parse: str keys, small lists, one dict
        d[f"k{i}"] = [i, str(i)]
    return len(d)


def machine_slowdown() -> float:
    """How much slower this machine runs plain Python now than the quiet reference machine (at
    least 1): CI boxes were measured 2-4x slower at times, which turned 2 s bounds on 0.5-1 s
    answers into failures while a quadratic answer would still be 10x over."""
    t0 = time.thread_time()
    _reference_work()
    return max(1.0, (time.thread_time() - t0) / REFERENCE_WORK_S)


class CpuClock:
    """Seconds of CPU the measured block cost this thread, in seconds of the quiet reference
    machine; read ``.seconds`` after the ``with`` block."""

    seconds: float = 0.0


@contextlib.contextmanager
def cpu_seconds() -> Iterator[CpuClock]:
    """Measure a block's own CPU: this thread only (the process clock also counts the daemon
    threads earlier tests leave behind: a CI run once read 2.5 s for a 1 s parse), with the
    heap the earlier tests built frozen out of the garbage collector (a full collection in a
    long session walks millions of their objects: 1.04 s instead of 0.35 s for the same parse
    measured here beside a 6-million-object heap), and once near a bound divided by
    :func:`machine_slowdown`."""
    import gc

    clock = CpuClock()
    gc.freeze()  # O(1): moves every tracked object to the permanent generation
    try:
        t0 = time.thread_time()
        yield clock
        cpu = time.thread_time() - t0
    finally:
        gc.unfreeze()
    if cpu > 0.5:  # only an answer near a bound needs the machine's speed (0.2 s to measure)
        cpu /= machine_slowdown()
    clock.seconds = cpu


def cli_run(args: list[str]) -> tuple[int, str, float, BaseException | None]:
    """(exit code, output, CPU seconds (:func:`cpu_seconds`), unexpected exception) of
    ``grpo-guard ARGS`` in-process."""
    from click.testing import CliRunner

    from grpo_guard.cli import main

    with cpu_seconds() as clock:
        res = CliRunner().invoke(main, args)
    exc = res.exception if res.exception is not None and not isinstance(res.exception, SystemExit) else None
    return res.exit_code, res.output, clock.seconds, exc


def assert_clean_rejection(code: int, output: str, exc: BaseException | None, field: str = "") -> None:
    """Exit 2, no traceback, and one error line naming ``field`` ('' = the config as a whole)."""
    assert exc is None, f"{exc!r}\n{output}"
    assert code == 2, f"exit {code}\n{output}"
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.startswith("  ")]
    want = f"  {field or '(config)'}"
    assert any(ln.startswith(want + ":") or ln.startswith(want + ".") for ln in lines), output

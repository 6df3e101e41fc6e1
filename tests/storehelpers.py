"""Helpers shared by the store and worker tests: fresh databases on both backends.

PostgreSQL: the server on 127.0.0.1:5432, database ``test`` (``scripts/services.sh`` starts
it). Each use gets its own schema (``search_path`` in the URL), dropped at the end, so tests
never see each other's rows and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

PG_BASE = os.environ.get("GG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _pg_admin():
    from sqlalchemy import create_engine

    return create_engine(PG_BASE, isolation_level="AUTOCOMMIT")


def pg_available() -> bool:
    try:
        from sqlalchemy import text

        eng = _pg_admin()
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh schema; yields a URL whose connections use it."""
    from sqlalchemy import text

    if not pg_available():
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (run `bash scripts/services.sh`)")
    schema = "gg_t_" + uuid.uuid4().hex[:10]
    eng = _pg_admin()
    with eng.connect() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        from grpo_guard.store import db

        db.dispose_engines()
        with eng.connect() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        eng.dispose()


@contextlib.contextmanager
def backend_env(backend: str, tmp: os.PathLike | str, *, upgrade: bool = True) -> Iterator[str]:
    """Sets GG_DATA_DIR, GG_ARTIFACTS and GG_DATABASE_URL for ``backend`` (sqlite|postgresql)
    under ``tmp``; runs the migrations; restores the environment afterwards."""
    from grpo_guard.store import db

    tmp = str(tmp)
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            url = stack.enter_context(pg_schema())
        else:
            url = "sqlite:///" + os.path.join(tmp, "store.db")
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("GG_DATA_DIR", tmp)
        mp.setenv("GG_ARTIFACTS", os.path.join(tmp, "artifacts"))
        mp.setenv("GG_DATABASE_URL", url)
        if upgrade:
            db.upgrade(url)
        try:
            yield url
        finally:
            db.dispose_engines()


@contextlib.contextmanager
def unwritable(path: str):
    """A directory nothing can be written into, even by root: immutable where the filesystem
    allows it, else a regular file standing where the directory should be."""
    os.makedirs(path, exist_ok=True)
    if subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0 and not _writable(path):
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", path], capture_output=True)
        return
    if os.geteuid() != 0:
        os.chmod(path, 0o500)
        try:
            yield
        finally:
            os.chmod(path, 0o700)
        return
    shutil.rmtree(path)
    with open(path, "w") as fh:
        fh.write("not a directory")
    try:
        yield
    finally:
        os.unlink(path)


def _writable(path: str) -> bool:
    try:
        with open(os.path.join(path, ".probe"), "w"):
            pass
        os.unlink(os.path.join(path, ".probe"))
        return True
    except OSError:
        return False

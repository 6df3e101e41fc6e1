"""Where the store lives and how to talk to it: URLs, engines, one transaction scope, schema check.

Environment (all optional; README has the table):
  GG_DATA_DIR      data directory (default ``./.grpo-guard``): SQLite file, embedded broker, artifacts
  GG_DATABASE_URL  e.g. ``postgresql+psycopg://user:pw@host:5432/db``; default SQLite in GG_DATA_DIR
  GG_ARTIFACTS     artifact root for images and checkpoints (default ``GG_DATA_DIR/artifacts``)
  GG_AUTO_MIGRATE  ``1``: create/upgrade the schema on first use; default 1 for SQLite, 0 otherwise

SQLite follows STACK.md D1/D2: WAL, ``synchronous=NORMAL``, a 30 s busy timeout, foreign keys
on every connection, and writers open their transaction with ``BEGIN IMMEDIATE`` (a deferred
``BEGIN`` cannot be upgraded to a write lock and fails with "database is locked" under load).

Imports no torch, and no Alembic until a migration is actually needed (it is slow to import).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

# The single Alembic head this code expects (tests check it against the migrations folder).
SCHEMA_REVISION = "0009"
DEFAULT_DATA_DIR = ".grpo-guard"
UPGRADE_COMMAND = "grpo-guard db upgrade"


class StoreError(Exception):
    """A store operation failed because of the request (bad id, bad value, constraint)."""


class StoreUnavailableError(StoreError):
    """The database could not be reached or was busy; retrying later may succeed."""


class StoreFullError(StoreUnavailableError):
    """The disk holding the database is full: writes fail until space is freed; reads still work."""


class StaleSchemaError(StoreError):
    """The database schema is not the revision this code needs; the message names the fix."""


class RunNotFoundError(StoreError, LookupError):
    """No run has this id."""


class ReadOnlySessionError(StoreError):
    """A write was attempted inside ``session_scope()`` without ``write=True``."""


# ---- locations ------------------------------------------------------------------------------
def data_dir() -> str:
    return os.path.abspath(os.environ.get("GG_DATA_DIR") or DEFAULT_DATA_DIR)


def database_url() -> str:
    """GG_DATABASE_URL, or a SQLite file in GG_DATA_DIR."""
    url = os.environ.get("GG_DATABASE_URL", "").strip()
    if url:
        return url
    return "sqlite:///" + os.path.join(data_dir(), "grpo-guard.db")


def missing_store() -> str | None:
    """One sentence saying where the store was looked for, when there is none to read: no
    GG_DATABASE_URL and no SQLite file in GG_DATA_DIR. None when there is a store (a database URL
    is taken on trust: the connection reports its own errors)."""
    if os.environ.get("GG_DATABASE_URL", "").strip():
        return None
    path = os.path.join(data_dir(), "grpo-guard.db")
    if os.path.exists(path):
        return None
    return (f"no store found: {path} does not exist and GG_DATABASE_URL is not set "
            "(pass --data-dir with the server's data directory, or set GG_DATA_DIR or GG_DATABASE_URL)")


def artifacts_root() -> str:
    """GG_ARTIFACTS, or ``artifacts/`` in GG_DATA_DIR. Not created here."""
    return os.path.abspath(os.environ.get("GG_ARTIFACTS") or os.path.join(data_dir(), "artifacts"))


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


# ---- engines --------------------------------------------------------------------------------
_engines: dict[tuple[str, int], Engine] = {}
_verified: set[tuple[str, int]] = set()
_lock = threading.RLock()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own; we do, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (one host only)
        cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; fast commits in WAL
        cur.execute("PRAGMA busy_timeout=30000")  # wait for the write lock instead of failing
        cur.execute("PRAGMA foreign_keys=ON")  # SQLite leaves them off unless asked
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front (STACK.md D2); readers get a snapshot.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("gg_write") else "BEGIN")


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default ``database_url()``); one per process, so
    a forked worker child never reuses its parent's connections."""
    url = url or database_url()
    key = (url, os.getpid())
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            if is_sqlite(url):
                path = make_url(url).database
                if path and path != ":memory:":
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
                _configure_sqlite(engine)
            else:
                kw: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 5}
                if url.startswith("postgresql"):
                    kw["connect_args"] = {"connect_timeout": 10}
                engine = create_engine(url, **kw)
            _engines[key] = engine
    return engine


def _after_fork_in_child() -> None:
    # Connections opened by the parent must not be closed (or used) by the child.
    for (_url, pid), engine in list(_engines.items()):
        if pid != os.getpid():
            engine.dispose(close=False)
    _engines.clear()
    _verified.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, shutdown)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _verified.clear()


# ---- schema ---------------------------------------------------------------------------------
def current_revision(url: str | None = None) -> str | None:
    """The Alembic revision the database is at, or None when it has no schema yet."""
    engine = get_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except exc.OperationalError as e:
        if _is_missing_table(e):
            return None
        raise StoreUnavailableError(f"cannot reach the database at {redact(engine.url.render_as_string())}: {_first_line(e)}") from e
    except exc.ProgrammingError as e:  # PostgreSQL: relation does not exist
        if _is_missing_table(e):
            return None
        raise


def _is_missing_table(e: Exception) -> bool:
    msg = str(e).lower()
    return "no such table" in msg or "does not exist" in msg or "undefinedtable" in msg


def _auto_migrate(url: str) -> bool:
    flag = os.environ.get("GG_AUTO_MIGRATE", "").strip()
    return flag == "1" if flag else is_sqlite(url)


def verify_schema(url: str | None = None) -> None:
    """Refuse a database whose schema is not SCHEMA_REVISION (MLflow's ``_verify_schema``).
    With GG_AUTO_MIGRATE (the default for SQLite) a missing or older schema is upgraded."""
    url = url or database_url()
    key = (url, os.getpid())
    if key in _verified:
        return
    rev = current_revision(url)
    if rev != SCHEMA_REVISION and _auto_migrate(url) and (rev is None or rev < SCHEMA_REVISION):
        upgrade(url)
        rev = current_revision(url)
    if rev != SCHEMA_REVISION:
        where = redact(url)
        if rev is None:
            msg = f"the database at {where} has no GRPO-Guard schema yet; run `{UPGRADE_COMMAND}` first"
        else:
            msg = (f"the database at {where} is at schema revision {rev}, but this code needs {SCHEMA_REVISION}; "
                   f"run `{UPGRADE_COMMAND}` (with the same GG_DATABASE_URL)")
        raise StaleSchemaError(msg)
    _verified.add(key)


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``url`` (default ``database_url()``).
    Serialised by a file lock on SQLite, so two processes starting at once are safe."""
    _migrate(url, revision, "upgrade")


def downgrade(url: str | None, revision: str) -> None:
    """Run the Alembic migrations down to ``revision`` (tests, and an operator rolling back), with
    the same guard as :func:`upgrade` against cascades on SQLite."""
    _migrate(url, revision, "downgrade")


def _migrate(url: str | None, revision: str, direction: str) -> None:
    from alembic import command
    from alembic.config import Config

    url = url or database_url()
    cfg = Config()
    cfg.set_main_option("script_location", os.path.join(os.path.dirname(__file__), "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = get_engine(url).execution_options(gg_write=True)
    with _migration_lock(url), engine.connect() as conn:
        sqlite = is_sqlite(url)
        if sqlite:
            # A batch migration recreates a table (copy, DROP, rename). With foreign keys on, the
            # DROP of `runs` cascades: every sample, checkpoint, log line, tag and key of every run
            # would be deleted. The pragma only works outside a transaction, so it goes to the
            # driver's connection before SQLAlchemy begins one.
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                getattr(command, direction)(cfg, revision)
                if sqlite:  # what the recreated tables point at must still exist, or nothing is kept
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"the {direction} to {revision} would leave {len(broken)} rows pointing "
                                         f"at missing rows (first: {broken[0]}); the database was not changed")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
    _verified.discard((url, os.getpid()))


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    if not is_sqlite(url):
        yield
        return
    import fcntl

    path = make_url(url).database
    if not path or path == ":memory:":
        yield
        return
    with open(os.path.abspath(path) + ".migrate.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- the transaction scope ------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _refuse_writes(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlySessionError("a write was attempted in a read-only session_scope(); pass write=True")


@contextlib.contextmanager
def session_scope(write: bool = False, *, url: str | None = None) -> Iterator[Session]:
    """One unit of work: commits on success (``write=True``), rolls back on error, always closes.

    Read-only by default: an INSERT/UPDATE/DELETE inside a read scope raises
    ``ReadOnlySessionError``. Database errors come out as ``StoreUnavailableError`` (could not
    connect, locked, server gone: try again later) or ``StoreError`` (the request was bad).
    """
    url = url or database_url()
    verify_schema(url)
    engine = get_engine(url)
    bind = engine.execution_options(gg_write=True) if write else engine
    session = Session(bind=bind, autoflush=False, expire_on_commit=False)
    if not write:
        event.listen(session, "do_orm_execute", _refuse_writes)
        event.listen(session, "before_flush", lambda s, *_: _refuse_writes(_FlushState(s)))
    try:
        yield session
        if write:
            session.commit()
        else:
            session.rollback()
    except (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError) as e:
        session.rollback()
        if _is_disk_full(e):
            raise StoreFullError(f"no space left for the database ({redact(url)}): {_first_line(e)}. Nothing "
                                 "can be saved until space is freed; everything stored can still be read") from e
        raise StoreUnavailableError(f"database unavailable ({redact(url)}): {_first_line(e)}") from e
    except (exc.IntegrityError, exc.DataError) as e:
        session.rollback()
        raise StoreError(f"the database refused the write: {_first_line(e)}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _is_disk_full(e: BaseException) -> bool:
    text = _first_line(e).lower()
    return "disk is full" in text or "no space left" in text or "diskfull" in text or "disk full" in text


class _FlushState:
    """Adapts a pending ORM flush to the is_insert/is_update/is_delete checks."""

    def __init__(self, session: Session) -> None:
        self.is_insert = bool(session.new)
        self.is_update = bool(session.dirty)
        self.is_delete = bool(session.deleted)


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


# ---- small helpers shared by the store modules ----------------------------------------------
def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upsert(session: Session, table: Table, rows: list[dict[str, Any]], keys: Sequence[str],
           update: Sequence[str] | None = None) -> None:
    """Insert ``rows`` (one executemany); on a conflict on ``keys`` overwrite the ``update``
    columns (default: every non-key column), or keep the old row when ``update`` is empty.
    Uses each dialect's own ``INSERT .. ON CONFLICT`` (STACK.md D6)."""
    if not rows:
        return
    name = dialect_name(session)
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise StoreError(f"unsupported database dialect {name!r}; use SQLite or PostgreSQL")
    stmt = insert(table)
    cols = [c for c in rows[0] if c not in keys] if update is None else list(update)
    if cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    session.execute(stmt, rows)


_COPY_TYPES = {"Integer": "int4", "SmallInteger": "int2", "BigInteger": "int8", "Float": "float8"}


def bulk_upsert(session: Session, table: Table, columns: Sequence[str], rows: list[tuple],
                keys: Sequence[str]) -> None:
    """``upsert`` for large batches of plain tuples (ints, floats, str, None; JSON already
    serialised), bypassing SQLAlchemy's per-row parameter processing. SQLite: one DBAPI
    ``executemany`` of ``INSERT .. ON CONFLICT DO UPDATE``. PostgreSQL: a binary COPY straight
    into the table inside a savepoint; if a key already exists, the batch is copied into a
    per-connection temporary table instead and merged with ``INSERT .. SELECT .. ON CONFLICT DO
    UPDATE``. The batch must not repeat a key (the recorder's buffer is keyed by it)."""
    if not rows:
        return
    name = table.name
    cols = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in keys)
    conflict = f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    dbapi = session.connection().connection.driver_connection
    dialect = dialect_name(session)
    if dialect == "sqlite":
        marks = ", ".join("?" * len(columns))
        dbapi.cursor().executemany(f"INSERT INTO {name} ({cols}) VALUES ({marks}) {conflict}", rows)
    elif dialect == "postgresql":
        import psycopg

        # text for strings and JSON: their binary COPY form is the UTF-8 text itself
        types = [_COPY_TYPES.get(type(table.c[c].type).__name__, "text") for c in columns]

        def copy_into(cur: Any, target: str) -> None:
            with cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)

        with dbapi.cursor() as cur:
            # Fast path: new keys (the usual case) are copied straight into the table.
            cur.execute("SAVEPOINT gg_bulk")
            try:
                copy_into(cur, name)
                cur.execute("RELEASE SAVEPOINT gg_bulk")
                return
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT gg_bulk")
            # Some keys exist (a replayed step): stage the batch, then upsert it.
            stage = f"_gg_stage_{name}"
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            copy_into(cur, stage)
            cur.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {stage} {conflict}")
            cur.execute(f"TRUNCATE {stage}")  # the same transaction may stage this table again
    else:  # pragma: no cover
        raise StoreError(f"unsupported database dialect {dialect!r}; use SQLite or PostgreSQL")

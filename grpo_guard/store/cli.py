"""``grpo-guard db``: create or upgrade the store's schema."""

from __future__ import annotations

import click


@click.group("db")
def db_group() -> None:
    """Manage the store's database schema (GG_DATABASE_URL, default SQLite in GG_DATA_DIR)."""


@db_group.command("upgrade")
@click.option("--url", default=None, help="Database URL (default: GG_DATABASE_URL or the SQLite file in GG_DATA_DIR).")
@click.option("--revision", default="head", show_default=True, help="Target Alembic revision.")
def db_upgrade(url: str | None, revision: str) -> None:
    """Apply the Alembic migrations (creates the schema on an empty database)."""
    from grpo_guard.store import db

    target = url or db.database_url()
    before = db.current_revision(target)
    db.upgrade(target, revision)
    after = db.current_revision(target)
    click.echo(f"{db.redact(target)}: schema {before or '(none)'} -> {after}")


@db_group.command("current")
@click.option("--url", default=None, help="Database URL (default: GG_DATABASE_URL or GG_DATA_DIR's SQLite).")
def db_current(url: str | None) -> None:
    """Print the schema revision of the database and the one this code needs; exit 1 if they differ."""
    from grpo_guard.store import db

    target = url or db.database_url()
    rev = db.current_revision(target)
    click.echo(f"{db.redact(target)}: schema {rev or '(none)'}; this code needs {db.SCHEMA_REVISION}")
    if rev != db.SCHEMA_REVISION:
        raise SystemExit(1)

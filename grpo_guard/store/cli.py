"""``grpo-guard db``: create or upgrade the store's schema."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(*, must_exist: bool = False) -> Callable[[F], F]:
    """``--data-dir DIR`` for a command that opens the store: sets GG_DATA_DIR while the command
    line is parsed, so before the command body opens the store (or the embedded broker) there.
    ``must_exist``: a command that only reads or changes stored runs exits 1 with one sentence
    saying where it looked when there is no store, instead of creating an empty one."""

    def apply(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ["GG_DATA_DIR"] = os.path.abspath(value)
        if must_exist and not ctx.resilient_parsing:
            from grpo_guard.store import db

            message = db.missing_store()
            if message:
                raise click.ClickException(message)

    return click.option("--data-dir", type=click.Path(file_okay=False), default=None, expose_value=False,
                        callback=apply, metavar="DIR",
                        help="Data directory of the store (default: GG_DATA_DIR or ./.grpo-guard).")


@click.group("db")
def db_group() -> None:
    """Manage the store's database schema (GG_DATABASE_URL, default SQLite in GG_DATA_DIR)."""


@db_group.command("upgrade")
@data_dir_option()
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
@data_dir_option()
@click.option("--url", default=None, help="Database URL (default: GG_DATABASE_URL or GG_DATA_DIR's SQLite).")
def db_current(url: str | None) -> None:
    """Print the schema revision of the database and the one this code needs; exit 1 if they differ."""
    from grpo_guard.store import db

    target = url or db.database_url()
    rev = db.current_revision(target)
    click.echo(f"{db.redact(target)}: schema {rev or '(none)'}; this code needs {db.SCHEMA_REVISION}")
    if rev != db.SCHEMA_REVISION:
        raise SystemExit(1)

"""``grpo-guard judge new`` and ``grpo-guard judgments summary|export``: the CLI side of human
judging (the web side is ``/judge`` and ``/judgments``). Imports no torch."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from grpo_guard.store.cli import data_dir_option

DEFAULT_URL = "http://127.0.0.1:7860"


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input and store errors become one clean line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from grpo_guard.store.db import StoreError

        try:
            return fn(*args, **kwargs)
        except (StoreError, ValueError, LookupError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def _ids(text: str) -> list[int]:
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lstrip("#")
        if not part:
            continue
        if not part.isdigit():
            raise click.BadParameter(f"run ids are numbers like 3,4; got {part!r}", param_hint="--runs")
        out.append(int(part))
    if not out:
        raise click.BadParameter("name at least one run, e.g. --runs 3,4", param_hint="--runs")
    return out


@click.group("judge")
def judge_group() -> None:
    """Blind A/B judging of eval samples by people (human gold)."""


@judge_group.command("new")
@data_dir_option(must_exist=True)
@click.option("--runs", required=True, help="Run ids: two or more (matched eval steps), or one (steps of one run).")
@click.option("--steps", default=None,
              help="Eval steps, comma-separated: numbers, 'best' (best mean gold) or 'last'. Several runs: only "
                   "these matched steps; one run: these steps against each other (default best,last); "
                   "--base: these steps against step 0.")
@click.option("--pairs", default=100, show_default=True, type=click.IntRange(1, 20_000),
              help="How many sample pairs, balanced over prompts.")
@click.option("--base", is_flag=True, help="Judge each step of each run against the run's step 0 (the base model).")
@click.option("--name", default="", help="A name for the session (shown in the list, never while judging).")
@click.option("--url", "base_url", default=None, metavar="URL",
              help=f"Where the web UI answers, for the printed link (default GG_PUBLIC_URL or {DEFAULT_URL}).")
@_errors
def judge_new(runs: str, steps: str | None, pairs: int, base: bool, name: str, base_url: str | None) -> None:
    """Create a judging session and print its URL."""
    from grpo_guard.judging.sessions import new_session
    from grpo_guard.store import judgments

    step_list = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    sid = new_session(_ids(runs), step_list, pairs=pairs, base=base, name=name, created_by=os.environ.get("USER", ""))
    n = len(judgments.get_session(sid).pairs)
    root = (base_url or os.environ.get("GG_PUBLIC_URL") or DEFAULT_URL).rstrip("/")
    click.echo(f"judging session {sid}: {n} pair(s)", err=True)
    click.echo(f"{root}/judge?session={sid}")


@click.group("judgments")
def judgments_group() -> None:
    """Summarise and export the judgments of a judging session."""


@judgments_group.command("summary")
@data_dir_option(must_exist=True)
@click.argument("session", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def judgments_summary(session: int, as_json: bool) -> None:
    """Win rates with Wilson 95 % intervals, Bradley–Terry scores and judge agreement of SESSION."""
    import json

    from grpo_guard.judging.sessions import session_summary, summary_text

    s = session_summary(session)
    click.echo(json.dumps(s.to_dict(), indent=2) if as_json else summary_text(s))


@judgments_group.command("export")
@data_dir_option(must_exist=True)
@click.argument("session", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to a file instead of stdout.")
@_errors
def judgments_export(session: int, fmt: str, out: str | None) -> None:
    """Every judgment of SESSION, one row each (who, which samples, which was left, the choice, reasons, time)."""
    from grpo_guard.judging.sessions import export

    text = export(session, fmt)
    if out:
        with open(out, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)

"""``grpo-guard prompts``: list the prompt sets, show a few prompts of one, export one to a file.
Torch-free (it resolves specs through :mod:`grpo_guard.prompts` only)."""

from __future__ import annotations

import json

import click


def _resolve(spec: str) -> list:
    from grpo_guard.prompts import resolve_prompts

    try:
        return resolve_prompts(spec)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.group("prompts")
def prompts_group() -> None:
    """List, show and export prompt sets (toy:*, ocr:*, geneval:*, file:, geneval:file:, hf:)."""


@prompts_group.command("list")
def list_cmd() -> None:
    """The registered prompt sets and the spec forms that take an argument."""
    from grpo_guard.prompts import SPEC_FORMS, registry

    sets = registry()
    width = max(len(n) for n in [*sets, *SPEC_FORMS])
    for name in sorted(sets):
        click.echo(f"{name:<{width}}  {sets[name].description}")
    for form, what in SPEC_FORMS.items():
        click.echo(f"{form:<{width}}  {what}")


@prompts_group.command("show")
@click.argument("name")
@click.option("--n", "n", type=click.IntRange(min=0), default=5, show_default=True, help="How many prompts to print.")
def show_cmd(name: str, n: int) -> None:
    """How many prompts NAME holds and its first N, each with its metadata (if any) as JSON."""
    prompts = _resolve(name)
    with_meta = sum(1 for p in prompts if getattr(p, "meta", None))
    click.echo(f"{name}: {len(prompts):,} prompts" + (f", {with_meta:,} with metadata" if with_meta else ""))
    for p in prompts[:n]:
        meta = getattr(p, "meta", None)
        click.echo(f"{p}\t{json.dumps(meta)}" if meta else str(p))


@prompts_group.command("export")
@click.argument("name")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, writable=True), help="Output file.")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default=None,
              help="text: one prompt a line; jsonl: {prompt, tag, include, exclude} a line, readable as "
                   "geneval:file:FILE. Default: jsonl for a .jsonl file, else text.")
def export_cmd(name: str, out_path: str, fmt: str | None) -> None:
    """Write the prompts of NAME to FILE (text, or jsonl with metadata)."""
    from grpo_guard.prompts import write_prompts

    prompts = _resolve(name)
    fmt = fmt or ("jsonl" if out_path.endswith(".jsonl") else "text")
    try:
        n = write_prompts(prompts, out_path, fmt)
    except OSError as e:
        raise click.UsageError(f"cannot write {out_path}: {e.strerror or e}") from None
    click.echo(f"wrote {n:,} prompts to {out_path} ({fmt})")

"""``grpo-guard rewards list [--json]``: every registered reward (built in, plugins, declared
servers) with its kind, backbones, options and where it comes from. Loads no torch."""

from __future__ import annotations

import json

import click


@click.group("rewards")
def rewards_group() -> None:
    """Rewards and gold evaluators a run config can name."""


@rewards_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: rewards and problems.")
def list_cmd(as_json: bool) -> None:
    """Every reward with kind, backbones, options and the package (or server) it comes from."""
    from grpo_guard.rewards import PROBLEMS, reward_rows

    rows = reward_rows()
    if as_json:
        click.echo(json.dumps({"rewards": rows, "problems": list(PROBLEMS)}, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        opts = ", ".join(f"{k}:{t}" for k, t in r["options"].items()) or "-"
        click.echo(f"{r['name']:<{width}}  {r['kind']:<5}  {','.join(r['backbones']):<14}  {r['source']:<22}  {opts}")
    for p in PROBLEMS:
        click.echo(f"warning: {p}", err=True)

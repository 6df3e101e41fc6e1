"""``grpo-guard plan CONFIG``: GPU memory per phase, the verdict, FLOPs and GPU-hours, before launch."""

from __future__ import annotations

import json
import sys

import click

from grpo_guard.planning.gpus import GPUS


@click.command("plan")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field (repeatable).")
@click.option("--gpu", type=click.Choice(list(GPUS)), default=None,
              help="Plan for this GPU (default h100): " + ", ".join(f"{k} {g.memory_gib:g} GiB" for k, g in GPUS.items()))
@click.option("--gpu-memory", type=click.FloatRange(min=0.1, max=100000), default=None, metavar="GiB",
              help="Plan for a GPU of this much memory (peak rate of --gpu, else the H100's).")
@click.option("--mfu", type=click.FloatRange(min=0.01, max=1.0), default=None,
              help="Model-FLOPs utilisation for the time estimate (default: the GPU check's measured MFU, else 0.30).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(config_path: str, overrides: tuple[str, ...], gpu: str | None, gpu_memory: float | None,
             mfu: float | None, as_json: bool) -> None:
    """Estimate the peak GPU memory per phase (sampling, rewards, policy update), whether the run fits,
    and its FLOPs, time per epoch and GPU-hours — on fake tensors over the real architecture, no weights
    loaded. Exit code 0 when it fits, 1 when it does not, 2 for a bad config."""
    from grpo_guard.config import RunConfig
    from grpo_guard.planning.plan import make_plan, resolve_gpu
    from grpo_guard.planning.spec import PlanError

    cfg = RunConfig.from_file(config_path, overrides)  # a ConfigError is reported by the group
    try:
        plan = make_plan(cfg, resolve_gpu(gpu, gpu_memory), mfu=mfu)
    except PlanError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(json.dumps(plan.to_dict(), indent=1) if as_json else plan.text())
    sys.exit(0 if plan.fits else 1)

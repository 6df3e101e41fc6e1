"""``grpo-guard toy``: pretrain the toy base model, measure it, list its prompts."""

from __future__ import annotations

import json

import click


@click.group("toy")
def toy() -> None:
    """Toy world: pretrain the base model, measure it."""


@toy.command("pretrain")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the pipeline, scorers and logs.")
@click.option("--vae-seconds", default=140.0, show_default=True, help="Wall-clock budget of the VAE stage.")
@click.option("--scorer-seconds", default=90.0, show_default=True, help="Budget of the fidelity model + classifier stage.")
@click.option("--transformer-seconds", default=540.0, show_default=True, help="Budget of the transformer stage.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=None, type=int, help="torch threads (default: min(2, cores)).")
@click.option("--latent-bank", default=8192, show_default=True, help="Precomputed training latents.")
@click.option("--fp32", is_flag=True, help="Save float32 weights instead of fp16.")
@click.option("--scorers-only", is_flag=True, help="Only retrain the fidelity model and classifier of the pipeline in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def pretrain_cmd(out: str, vae_seconds: float, scorer_seconds: float, transformer_seconds: float, seed: int,
                 threads: int | None, latent_bank: int, fp32: bool, scorers_only: bool, quiet: bool) -> None:
    """Train the toy VAE, scorers and transformer on CPU and save a diffusers pipeline to OUT.

    With the defaults it takes about 13.5 minutes on 2 cores (VAE 140 s, scorers 90 s, transformer
    540 s, plus latent banks, a quick sample check and saving). Use the result with
    `model: OUT` (backbone toy) or `grpo-guard toy measure --model OUT`."""
    import os

    # On a shared CPU, spinning OpenMP workers stall each other (measured: 4 s instead of 0.3 s
    # per transformer step); passive waiting costs little on an idle machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from grpo_guard.toyworld.pretrain import PretrainSettings, pretrain

    summary = pretrain(PretrainSettings(out=out, vae_seconds=vae_seconds, scorer_seconds=scorer_seconds,
                                        transformer_seconds=transformer_seconds, seed=seed, threads=threads,
                                        latent_bank=latent_bank, save_dtype="fp32" if fp32 else "fp16",
                                        scorers_only=scorers_only, progress=not quiet))
    if scorers_only:
        sc = summary["scorers"]
        click.echo(f"retrained the scorers in {out}: {sc['steps']} steps; " + ", ".join(
            f"{k} {v:.2f}" for k, v in sc.items() if k.startswith(("fidelity_", "classifier_acc"))))
        return
    tr, chk = summary["transformer"], summary.get("quick_check", {})
    click.echo(f"saved {out}: {tr['steps']} transformer steps, loss {tr['final_loss_avg']:.4f}, "
               f"{summary['total_seconds']:.0f} s in total")
    click.echo("quick check (12 prompts per split): " + ", ".join(f"{k} {v:.2f}" for k, v in chk.items()))


@toy.command("measure")
@click.option("--model", default=None, type=click.Path(file_okay=False), help="Pipeline directory (default: the shipped base model).")
@click.option("--prompts-per-split", default=24, show_default=True, help="Prompts sampled from each split (train, held-out).")
@click.option("--seeds", default=4, show_default=True, help="Seeds per prompt.")
@click.option("--steps", default=20, show_default=True, help="ODE steps.")
@click.option("--cfg", default=4.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--json-out", default=None, type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--grid", default=None, type=click.Path(dir_okay=False), help="Write a PNG grid of samples here.")
def measure_cmd(model: str | None, prompts_per_split: int, seeds: int, steps: int, cfg: float,
                json_out: str | None, grid: str | None) -> None:
    """Sample the toy model and report colour/shape accuracy by the analytic checker."""
    from grpo_guard.toyworld.measure import format_table, measure

    res = measure(model, prompts_per_split=prompts_per_split, seeds=seeds, steps=steps, cfg=cfg, grid_path=grid)
    click.echo(format_table(res))
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)


@toy.command("prompts")
@click.argument("spec", default="toy:train")
def prompts_cmd(spec: str) -> None:
    """Print the prompts of a set (toy:train, toy:heldout, toy:all or any spec of `grpo-guard prompts list`)."""
    from grpo_guard.prompts import resolve_prompts

    try:
        for p in resolve_prompts(spec):
            click.echo(p)
    except ValueError as e:
        raise click.UsageError(str(e)) from None

"""``grpo-guard export``: a run's checkpoint (or any checkpoint file) as a diffusers LoRA or a
complete pipeline with a model card, optionally pushed to the Hugging Face hub."""

from __future__ import annotations

import click

from grpo_guard.store.cli import data_dir_option


@click.command("export")
@click.argument("run_id", type=int, required=False)
@click.option("--checkpoint", "checkpoint", type=click.Path(), default=None,
              help="Export this checkpoint file (ckpt_*.pt) instead of a run's.")
@click.option("--step", default="best", show_default=True, metavar="best|last|N",
              help="Which checkpoint of the run: the best-gold one, the last one, or epoch N.")
@click.option("--weights", type=click.Choice(["auto", "ema", "raw"]), default="auto", show_default=True,
              help="auto: the EMA weights when the run kept an EMA (what evaluation sampled), else the raw ones.")
@click.option("--format", "fmt", type=click.Choice(["lora", "pipeline"]), default=None,
              help="lora: pytorch_lora_weights.safetensors for the base model (default for LoRA runs); "
                   "pipeline: a complete save_pretrained directory (default for full fine-tuning).")
@click.option("--out", "out", required=True, type=click.Path(), metavar="DIR",
              help="Directory to write (must not exist).")
@click.option("--force", is_flag=True, help="Replace an existing --out (only once the new export is complete).")
@click.option("--copy", "copy", is_flag=True,
              help="pipeline: copy the base's unchanged components into --out instead of linking them.")
@click.option("--device", default="cpu", show_default=True, help="torch device to build the model on.")
@click.option("--push-to-hub", "repo_id", default=None, metavar="REPO_ID",
              help="Then upload the folder to this hub model repo (token: HF_TOKEN or `hf auth login`).")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo private.")
@click.option("--zip", "zip_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the finished folder as one zip file here (linked components included).")
@click.option("--card-path", "card_path", default=None, metavar="PATH",
              help="How the card's diffusers lines name the export (default: --out's absolute path, or the "
                   "--push-to-hub repo id); the web app uses the zip's folder name.")
@data_dir_option()
def export_cmd(run_id: int | None, checkpoint: str | None, step: str, weights: str, fmt: str | None, out: str,
               force: bool, copy: bool, device: str, repo_id: str | None, private: bool, zip_path: str | None,
               card_path: str | None) -> None:
    """Export RUN_ID's checkpoint (or --checkpoint PATH) with a model card; prints the folder."""
    from grpo_guard.export.exporter import export, push_to_hub, zip_folder
    from grpo_guard.export.facts import ExportError, from_checkpoint, from_store, parse_step
    from grpo_guard.store.db import StoreError

    if (run_id is None) == (checkpoint is None):
        raise click.UsageError("give a RUN_ID or --checkpoint PATH (one of them).")
    step_given = click.get_current_context().get_parameter_source("step") != click.core.ParameterSource.DEFAULT
    if checkpoint and step_given:  # silently exporting another step than asked would be worse
        raise click.UsageError("--step picks a checkpoint of RUN_ID; with --checkpoint PATH the file is the step.")
    if private and not repo_id:
        raise click.UsageError("--private goes with --push-to-hub REPO_ID.")

    def say(msg: str) -> None:
        click.echo(f"export: {msg}", err=True)

    try:
        if checkpoint:
            chosen = from_checkpoint(checkpoint)
        else:
            from grpo_guard.store import db

            missing = db.missing_store()
            if missing:
                raise ExportError(missing)
            chosen = from_store(run_id, parse_step(step))
        result = export(chosen, out, fmt=fmt, weights=weights, force=force, copy=copy, device=device,
                        load_from=repo_id or card_path, progress=say)
        if zip_path:
            say(f"writing {zip_path}")
            zip_folder(result.out, zip_path)
        if repo_id:
            say(f"uploading to the hub repo {repo_id}")
            click.echo(push_to_hub(result.out, repo_id, private=private))
    except (ExportError, StoreError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(result.out)

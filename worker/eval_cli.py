"""``grpo-guard eval``: a benchmark protocol on the base model of a config, a run's checkpoint or
a checkpoint file, in the foreground (``--out`` gets the paper-style table as Markdown and JSON)
or queued for a worker (``--submit``, as the Run page's Evaluate… button does). Results go to the
store's ``evaluations`` table; images to the artifact store."""

from __future__ import annotations

import os
import sys

import click

from grpo_guard.store.cli import data_dir_option
from worker.cli import _store_errors


def write_outputs(out_dir: str, request, model, base, partners: list | None = None) -> list[str]:
    """table.md, table.json and per_prompt.jsonl in ``out_dir`` (with the tables at equal proxy
    against the run's A/B partner or fellow arms, when given); returns their paths."""
    import json

    from grpo_guard.evaluation.table import markdown, table_rows, to_json

    bench = request.benchmark
    present = sorted({p.get("tag") for p in model.per_prompt if p.get("tag")})
    rows = table_rows(bench.metric_names(present), base.metrics if base else model.metrics, model.metrics)
    title = f"{bench.name} — {request.model.label()} ({request.images_per_prompt} images per prompt, " \
            f"{len(request.prompts)} prompts: {request.prompts_spec})"
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("table.md", "table.json", "per_prompt.jsonl")]
    with open(paths[0], "w", encoding="utf-8") as fh:
        fh.write(markdown(title, rows))
        for p in partners or []:
            fh.write("\n" + markdown(f"at equal proxy: run #{p['run']} @ step {p['step']} (eval/proxy "
                                     f"{p['proxy']:.4f}) against this model (eval/proxy {p['this_proxy']:.4f})",
                                     p["rows"], base_label="this model", model_label=f"run #{p['run']}"))
    with open(paths[1], "w", encoding="utf-8") as fh:
        fh.write(to_json({"benchmark": bench.name, "model": request.model.label(), "headline": bench.headline,
                          "evaluation_id": model.evaluation_id,
                          "base_evaluation_id": base.evaluation_id if base else model.evaluation_id,
                          "protocol": request.protocol(), "rows": rows, "equal_proxy": partners or []}))
    with open(paths[2], "w", encoding="utf-8") as fh:
        for p in model.per_prompt:
            fh.write(json.dumps(p) + "\n")
    return paths


def _exit_on_sigterm():
    """SIGTERM (a timeout, a closed session) becomes SystemExit, so a foreground evaluation that is
    stopped removes its row and images as on Ctrl-C instead of leaving a row ``running`` for ever.
    Returns the previous handler (None off the main thread, where signals cannot be set)."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


@click.command("eval")
@click.option("--benchmark", default=None, help="geneval, ocr, preference or toy (--list).")
@click.option("--list", "list_", is_flag=True, help="List the benchmarks and exit.")
@click.option("--run", "run_id", type=int, default=None, help="Evaluate this run's checkpoint (see --step).")
@click.option("--step", default="best", show_default=True, help="With --run: best, last or a step number.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Evaluate this checkpoint file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Alone: evaluate this config's base model. With --run/--checkpoint: where scorer weights live.")
@click.option("--prompts", default=None, help="Prompt set (default: the benchmark's, e.g. geneval:test).")
@click.option("--images-per-prompt", type=int, default=None, help="Images per prompt (GenEval: 4).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write table.md, table.json and per_prompt.jsonl here.")
@click.option("--submit", is_flag=True, help="Queue it for a worker instead of running here; print the id.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@data_dir_option()
@_store_errors
def eval_cmd(benchmark: str | None, list_: bool, run_id: int | None, step: str, checkpoint: str | None,
             config_path: str | None, prompts: str | None, images_per_prompt: int | None, out_dir: str | None,
             submit: bool, device: str | None) -> None:
    """Evaluate a model on a benchmark's protocol; print the paper-style table."""
    from grpo_guard.evaluation.benchmarks import BENCHMARKS

    if list_:
        for b in BENCHMARKS.values():
            click.echo(f"{b.name:<11} {b.description} (default prompts: {b.prompts or '--prompts required'}, "
                       f"{b.images_per_prompt} per prompt)")
        return
    if not benchmark:
        raise click.UsageError("give --benchmark NAME (grpo-guard eval --list)")
    from grpo_guard.evaluation.request import build_request

    try:
        request = build_request(benchmark, run_id=run_id, step=step, checkpoint=checkpoint, config_path=config_path,
                                prompts=prompts, images_per_prompt=images_per_prompt)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if submit:
        from worker.submit import submit_evaluation

        done = submit_evaluation(request)
        for warning in done.warnings:
            click.echo(f"Warning: {warning}", err=True)
        click.echo(done.ids[0])
        return
    previous = _exit_on_sigterm()
    try:
        _foreground(request, device, out_dir)
    finally:
        _restore_sigterm(previous)


def _foreground(request, device: str | None, out_dir: str | None) -> None:
    """Evaluate here: the model, the base column (reused when stored), the partners at equal proxy."""
    from grpo_guard.evaluation.runner import evaluate, evaluate_one
    from grpo_guard.evaluation.table import markdown, table_rows
    from grpo_guard.models.base import ModelNotFoundError

    def progress(msg: str) -> None:
        click.echo(f"\r{request.benchmark.name}: {msg}", nl=False, err=True)

    try:
        model, base = evaluate(request, device=device, progress=progress if sys.stderr.isatty() else None,
                               keep_failed=False)
    except (ValueError, ModelNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    present = sorted({p.get("tag") for p in model.per_prompt if p.get("tag")})
    rows = table_rows(request.benchmark.metric_names(present), base.metrics if base else model.metrics, model.metrics)
    click.echo(markdown(f"{request.benchmark.name} — {request.model.label()}", rows), nl=False)
    click.echo(f"evaluation {model.evaluation_id}" + (" (reused)" if model.reused else "")
               + (f", base {base.evaluation_id}" + (" (reused)" if base.reused else "") if base else ""), err=True)
    partners = []
    if request.model.kind == "run":
        from grpo_guard.evaluation.request import equal_proxy_partners

        try:
            found = equal_proxy_partners(request)
        except ValueError as e:  # a partner's checkpoint without a readable sidecar
            raise click.ClickException(str(e)) from None
        for other, level, value in found:
            try:
                got = evaluate_one(other, device=device, keep_failed=False)
            except (ValueError, ModelNotFoundError) as e:
                raise click.ClickException(f"{other.model.label()} at equal proxy: {e}") from None
            rows = table_rows(request.benchmark.metric_names(present), model.metrics, got.metrics)
            title = (f"at equal proxy: {other.model.label()} (eval/proxy {value:.4f}) against "
                     f"{request.model.label()} (eval/proxy {level:.4f})")
            click.echo("\n" + markdown(title, rows, base_label=f"run #{request.model.run_id}",
                                       model_label=f"run #{other.model.run_id}"), nl=False)
            partners.append({"run": other.model.run_id, "step": other.model.step, "proxy": value,
                             "this_proxy": level, "evaluation_id": got.evaluation_id, "rows": rows})
    if out_dir:
        for path in write_outputs(out_dir, request, model, base, partners):
            click.echo(path, err=True)

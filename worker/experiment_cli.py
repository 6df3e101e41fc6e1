"""``grpo-guard experiment``: submit an experiment file (arms × seeds, + controls), list, show,
stop, resume and report experiments. Nothing here imports torch."""

from __future__ import annotations

from typing import Any

import click

from grpo_guard.store.cli import data_dir_option
from worker.cli import _dump, _finish_wait, _fmt, _store_errors, _warn


class SeedsOption(click.Option):
    """``--seeds 0 1 2``: the option takes every following argument that is not an option."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is not None:
                previous = opt.process

                def process(value: Any, state: Any, previous: Any = previous) -> None:
                    values = [value]
                    while state.rargs and not state.rargs[0].startswith("-"):
                        values.append(state.rargs.pop(0))
                    previous(" ".join(values), state)

                opt.process = process


def _seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split()]
    except ValueError:
        raise click.BadParameter(f"seeds are integers, e.g. --seeds 0 1 2; got {value!r}") from None


@click.group("experiment")
def experiment_group() -> None:
    """Arms × seeds (+ matched no-signal controls) as one object: submit, list, show, stop, resume, report."""


@experiment_group.command("submit")
@click.argument("path", metavar="EXP.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field of the base run config, for every arm (repeatable).")
@click.option("--seeds", cls=SeedsOption, default=None, callback=_seeds, metavar="N [N ...]",
              help="Replace the file's seeds, e.g. --seeds 0 1 2.")
@click.option("--name", default=None, help="Experiment name (default: the file's `name`).")
@click.option("--wait", is_flag=True, help="Wait for every run to end; exit non-zero unless all succeeded.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@data_dir_option()
@_store_errors
def experiment_submit(path: str, overrides: tuple[str, ...], seeds: list[int] | None, name: str | None,
                      wait: bool, timeout: float | None, as_json: bool) -> None:
    """Validate EXP.yaml and every run it expands to, queue them all; print the experiment id."""
    from grpo_guard.experiments.config import ExperimentConfig
    from worker.experiment import submit_experiment

    exp = ExperimentConfig.from_file(path, overrides, seeds=seeds)
    if name:
        exp = exp.model_copy(update={"name": name})
    try:
        done = submit_experiment(exp)
    except ValueError as e:
        from grpo_guard.config import ConfigError

        if isinstance(e, ConfigError):
            raise
        raise click.ClickException(str(e)) from None
    _warn(done.runs)
    if as_json:
        _dump({"id": done.experiment_id, "runs": list(done.runs.ids)})
    else:
        click.echo(done.experiment_id)
    if wait:
        _finish_wait(done.runs.ids, timeout)


@experiment_group.command("list")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option(must_exist=True)
@_store_errors
def experiment_list(limit: int, as_json: bool) -> None:
    """Experiments, newest first, with the progress across their runs."""
    from grpo_guard.store import queries

    rows = queries.list_experiments(limit=limit)
    if as_json:
        _dump([r.to_dict() for r in rows])
        return
    click.echo(f"{'ID':>4}  {'STATUS':10} {'RUNS':>4} {'PROGRESS':>8}  {'CREATED':16}  NAME")
    for r in rows:
        click.echo(f"{r.id:>4}  {r.status:10} {r.runs:>4} {r.progress:>8.0%}  {r.created_at:%Y-%m-%d %H:%M}  {r.name}")


@experiment_group.command("show")
@click.argument("experiment_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option(must_exist=True)
@_store_errors
def experiment_show(experiment_id: int, as_json: bool) -> None:
    """An experiment: its arms, seeds and every run with its status and latest eval."""
    from grpo_guard.store import queries

    exp = queries.get_experiment(experiment_id)
    members = queries.experiment_runs(experiment_id)
    if as_json:
        _dump({**exp.to_dict(), "members": [m.to_dict() for m in members]})
        return
    cfg = exp.config
    click.echo(f"experiment {exp.id}: {exp.name}\n  status   {exp.status}, {exp.runs} runs, {exp.progress:.0%} done")
    click.echo(f"  arms     {', '.join(cfg.get('arms', {}))}" + ("  (+ no-signal controls)" if cfg.get("controls") else ""))
    click.echo(f"  seeds    {', '.join(str(s) for s in cfg.get('seeds', []))}")
    click.echo(f"  {'RUN':>5}  {'ARM':24} {'SEED':>4}  {'STATUS':10} {'STEP':>9}  {'PROXY':>7} {'GOLD':>7}")
    for m in members:
        r = m.run
        click.echo(f"  {r.id:>5}  {m.arm:24} {m.seed:>4}  {r.status:10} {f'{r.step}/{r.total}':>9}  "
                   f"{_fmt(r.latest_proxy):>7} {_fmt(r.latest_gold):>7}")


@experiment_group.command("stop")
@click.argument("experiment_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option(must_exist=True)
@_store_errors
def experiment_stop(experiment_id: int, as_json: bool) -> None:
    """Stop every run of the experiment (queued ones are cancelled, running ones checkpoint and end)."""
    from worker.experiment import stop_experiment

    statuses = stop_experiment(experiment_id)
    if as_json:
        _dump({"id": experiment_id, "runs": {str(k): v for k, v in statuses.items()}})
        return
    for rid, status in statuses.items():
        click.echo(f"run {rid}: {status}")


@experiment_group.command("resume")
@click.argument("experiment_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@data_dir_option(must_exist=True)
@_store_errors
def experiment_resume(experiment_id: int, as_json: bool) -> None:
    """Queue every failed or cancelled run of the experiment again (each from its last checkpoint)."""
    from worker.experiment import resume_experiment

    done = resume_experiment(experiment_id)
    _warn(done)
    if as_json:
        _dump({"id": experiment_id, "resumed": list(done.ids)})
        return
    click.echo(f"experiment {experiment_id}: resumed {len(done.ids)} run(s)" +
               (f": {', '.join(str(i) for i in done.ids)}" if done.ids else ""))


@experiment_group.command("report")
@click.argument("experiment_id", type=int)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the report.")
@data_dir_option(must_exist=True)
@_store_errors
def experiment_report(experiment_id: int, out: str) -> None:
    """Write table.md (markdown), figure.png and stats.json for the experiment into --out."""
    from grpo_guard.experiments.report import write_report

    try:
        paths = write_report(experiment_id, out)
    except (ValueError, RuntimeError, OSError) as e:
        raise click.ClickException(str(e)) from None
    for p in paths.values():
        click.echo(p)

"""The ``grpo-guard`` command line. Every command imports its heavy modules lazily so that
``grpo-guard --help`` answers at once and the app-side commands never load torch."""

from __future__ import annotations

import sys
from typing import NamedTuple

import click

from grpo_guard import __version__


class LazyCommand(NamedTuple):
    """A command that lives in another module, imported only when it is invoked."""

    target: str  # "module:attribute" of the click command
    help: str  # the one line `grpo-guard --help` shows without importing it


# Every command not defined in this file, in one table. Loading by name keeps `--help` instant,
# keeps torch out of the app-side commands, and is the only way the engine reaches the app and
# worker packages: it never imports them (DESIGN.md, rules of the house).
LAZY_COMMANDS: dict[str, LazyCommand] = {
    # the engine
    "toy": LazyCommand("grpo_guard.toyworld.cli:toy", "Toy world: pretrain the base model, measure it."),
    "prompts": LazyCommand("grpo_guard.cli.prompts:prompts_group",
                           "List, show and export prompt sets (ocr:, geneval:, hf:, toy:, files)."),
    "export": LazyCommand("grpo_guard.export.cli:export_cmd",
                          "Export a run's checkpoint as a diffusers LoRA or pipeline with a model card."),
    "train": LazyCommand("grpo_guard.cli.train:train_cmd",
                         "Train CONFIG.yaml in the foreground (progress bar, Ctrl-C stops cleanly)."),
    "plan": LazyCommand("grpo_guard.cli.plan:plan_cmd",
                        "Plan GPU memory per phase, fit, FLOPs and GPU-hours of CONFIG.yaml before launch."),
    "sample": LazyCommand("grpo_guard.cli.train:sample_cmd", "Write one image from a base model or a checkpoint."),
    "rewards": LazyCommand("grpo_guard.rewards.cli:rewards_group",
                           "List the rewards a run can name (built in, plugins, reward servers)."),
    "reward-server": LazyCommand("grpo_guard.rewards.server:reward_server_cmd",
                                 "Serve one registered reward over HTTP (the reward-server protocol)."),
    "db": LazyCommand("grpo_guard.store.cli:db_group", "Create or upgrade the store's database schema."),
    # the web app (app/)
    "serve": LazyCommand("app.cli:serve_cmd", "Start the web UI (and, by default, an embedded worker)."),
    # the job layer (worker/)
    "worker": LazyCommand("worker.cli:worker_cmd", "Run training workers (one process per GPU)."),
    "submit": LazyCommand("worker.cli:submit_cmd", "Queue a run from CONFIG.yaml (--ab: an A/B pair); print its id(s)."),
    "eval": LazyCommand("worker.eval_cli:eval_cmd", "Evaluate a model or checkpoint on a benchmark (geneval, ocr, "
                        "preference, toy); print and store the paper-style table."),
    "runs": LazyCommand("worker.cli:runs_group", "List, show, stop, resume, clone and recover runs."),
    "experiment": LazyCommand("worker.experiment_cli:experiment_group",
                              "Arms x seeds (+ no-signal controls) as one object: submit, list, show, stop, resume, report."),
    "judge": LazyCommand("grpo_guard.judging.cli:judge_group", "Blind A/B judging by people: `judge new` prints the session's URL."),
    "judgments": LazyCommand("grpo_guard.judging.cli:judgments_group", "Summarise or export a judging session's judgments."),
}


class ConfigErrorAware(click.Group):
    """Turns a ConfigError anywhere below into a clean message and exit code 2, and loads the
    commands of LAZY_COMMANDS on demand."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        # Before any command imports torch: the OpenMP settings for sharing the CPU, in this
        # process's environment so that every child (workers, ranks) inherits them.
        from grpo_guard.training import cpu

        cpu.apply()
        return super().main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[name].target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for n in self.list_commands(ctx):
            if n in LAZY_COMMANDS:
                rows.append((n, LAZY_COMMANDS[n].help))
            else:
                rows.append((n, self.commands[n].get_short_help_str(60)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from grpo_guard.config import ConfigError

        try:
            return super().invoke(ctx)
        except ConfigError as e:
            click.echo("error: invalid run config:", err=True)
            for fld, msg in e.errors:
                click.echo(f"  {fld or '(config)'}: {msg}", err=True)
            sys.exit(2)


@click.group(cls=ConfigErrorAware, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="grpo-guard")
def main() -> None:
    """GRPO-Guard Studio: run, watch and compare GRPO / GRPO-Guard fine-tuning of
    flow-matching text-to-image models."""
    from grpo_guard.quiet import silence_library_noise

    silence_library_noise()


# ---- config -------------------------------------------------------------------------------
@main.group("config")
def config_group() -> None:
    """Inspect and validate run configs."""


@config_group.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@click.option("--no-model-check", is_flag=True,
              help="Do not check here that a local `model` path or a relative prompt file exists (they may "
                   "exist only where the workers run; the workers check them).")
def config_validate(path: str, overrides: tuple[str, ...], no_model_check: bool) -> None:
    """Validate CONFIG.yaml as `grpo-guard submit` does and print the full resolved config."""
    from grpo_guard.config.validation import validate_run_config

    cfg = validate_run_config(path, overrides, check_paths=not no_model_check)
    if warning := cfg.prompt_overlap_warning():
        click.echo(f"Warning: {warning}", err=True)
    click.echo(cfg.to_yaml(), nl=False)


@config_group.command("defaults")
@click.option("--algorithm", default="grpo_guard", show_default=True)
@click.option("--backbone", default="toy", show_default=True)
def config_defaults(algorithm: str, backbone: str) -> None:
    """Print the default config for an algorithm and backbone as YAML."""
    from grpo_guard.config import RunConfig

    data: dict[str, object] = {"algorithm": algorithm, "backbone": backbone}
    if backbone != "toy":
        data["model"] = f"<path or hub id of the {backbone} model>"
    click.echo(RunConfig.from_dict(data).to_yaml(), nl=False)


@config_group.command("fields")
def config_fields() -> None:
    """List every config field with its section, default and help."""
    from grpo_guard.config import RunConfig

    for group, names in RunConfig.field_groups().items():
        click.echo(f"[{group}]")
        for name in names:
            info = RunConfig.model_fields[name]
            click.echo(f"  {name} (default {info.default!r})\n      {info.description}")

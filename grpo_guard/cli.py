"""The ``grpo-guard`` command line. Every command imports its heavy modules lazily so that
``grpo-guard --help`` answers at once and the app-side commands never load torch."""

from __future__ import annotations

import sys

import click

from grpo_guard import __version__

# Commands that live in other modules, loaded only when invoked (keeps `--help` instant and
# keeps torch out of app-side commands). name -> ("module:attribute", short help).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "toy": ("grpo_guard.toyworld.cli:toy", "Toy world: pretrain the base model, measure it."),
    "train": ("grpo_guard.cli_train:train_cmd", "Train CONFIG.yaml in the foreground (progress bar, Ctrl-C stops cleanly)."),
    "sample": ("grpo_guard.cli_train:sample_cmd", "Write one image from a base model or a checkpoint."),
    "db": ("grpo_guard.store.cli:db_group", "Create or upgrade the store's database schema."),
    "serve": ("app.cli:serve_cmd", "Start the web UI (and, by default, an embedded worker)."),
    "worker": ("worker.cli:worker_cmd", "Run training workers (one process per GPU)."),
    "submit": ("worker.cli:submit_cmd", "Queue a run from CONFIG.yaml and print its id."),
    "runs": ("worker.cli:runs_group", "List, show, stop, resume, clone and recover runs."),
}


class ConfigErrorAware(click.Group):
    """Turns a ConfigError anywhere below into a clean message and exit code 2, and loads the
    commands of LAZY_COMMANDS on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[name][0].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for n in self.list_commands(ctx):
            if n in LAZY_COMMANDS:
                rows.append((n, LAZY_COMMANDS[n][1]))
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
def config_validate(path: str, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG.yaml and print the full resolved config."""
    from grpo_guard.config import RunConfig

    cfg = RunConfig.from_file(path, overrides)
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


if __name__ == "__main__":
    main()

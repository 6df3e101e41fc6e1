"""The ``grpo-guard`` command table: every lazily loaded command resolves to its click command,
and ``--help`` lists them all without importing the app or the worker."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from grpo_guard.cli import LAZY_COMMANDS, main


def test_every_lazy_command_resolves_to_a_click_command_of_that_name():
    for name, entry in LAZY_COMMANDS.items():
        module, _, attr = entry.target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command) and cmd.name == name, name
        assert main.get_command(click.Context(main), name) is cmd


def test_help_lists_every_command_without_importing_app_or_worker():
    out = CliRunner().invoke(main, ["--help"]).output
    assert all(name in out for name in LAZY_COMMANDS)
    code = ("import sys; from click.testing import CliRunner; from grpo_guard.cli import main; "
            "CliRunner().invoke(main, ['--help']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'worker', 'torch')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"--help imported {loaded}"

"""`python -m grpo_guard.cli ...`: the same as the `grpo-guard` command (the launchers and tests use it)."""

from grpo_guard.cli import main

main()

"""GRPO-Guard Studio engine: SDE sampler, GRPO / GRPO-Guard losses, trainer, store.

Importing this package loads no torch: the app imports `grpo_guard.config` and
`grpo_guard.store` and must start in seconds.
"""

__version__ = "0.1.0"

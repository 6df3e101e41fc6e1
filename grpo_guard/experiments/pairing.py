"""A/B pairs: the same run config queued once per algorithm of a pair (the baseline and its
Guard), with the same seeds, so that the two arms differ only in what the algorithm defines.

Used by the New-run page (the A/B checkbox) and ``grpo-guard submit --ab``; the runs themselves
are linked by a shared pair id when ``worker.submit`` inserts them. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpo_guard.config import ConfigError, RunConfig

# Fields that define the algorithm itself: each arm takes them from its own algorithm, even when
# the submitted config set them (a Guard switch set for one arm would make the baseline a Guard).
AB_ALGORITHM_FIELDS = ("ratio_norm", "grad_reweight", "delta")


def ab_pair_algorithms(algorithm: str) -> tuple[str, str]:
    """The baseline and its Guard: DanceGRPO pairs with DanceGRPO-Guard, else Flow-GRPO with GRPO-Guard."""
    return ("dance_grpo", "dance_grpo_guard") if algorithm.startswith("dance") else ("flow_grpo", "grpo_guard")


def ab_configs(data: Mapping[str, Any]) -> list[tuple[str, RunConfig]]:
    """``[(baseline, config), (guard, config)]`` from the fields a user chose (``data``): the same
    choices twice, with each algorithm's switches and derived defaults. Raises ConfigError
    whose messages start with the arm (``[flow_grpo] ...``) when an arm is not valid."""
    base = {k: v for k, v in data.items() if k not in AB_ALGORITHM_FIELDS}
    out = []
    for algo in ab_pair_algorithms(str(data.get("algorithm", "grpo_guard"))):
        try:
            out.append((algo, RunConfig.from_dict({**base, "algorithm": algo})))
        except ConfigError as e:
            raise ConfigError([(key, f"[{algo}] {msg}") for key, msg in e.errors]) from None
    return out


def ab_arms(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """:func:`ab_configs` of an already validated config (only the fields it set explicitly
    carry over, so each arm re-derives the rest from its algorithm)."""
    chosen = config.fields_set()
    return ab_configs({k: v for k, v in config.to_dict().items() if k in chosen})


def arm_differences(a: RunConfig, b: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{field: (value in a, value in b)}`` for every field in which the two arms differ, in
    the config's field order (what an A/B comparison actually varies)."""
    da, db = a.to_dict(), b.to_dict()
    return {name: (da[name], db[name]) for name in RunConfig.model_fields if da.get(name) != db.get(name)}

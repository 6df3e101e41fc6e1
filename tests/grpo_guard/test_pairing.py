"""A/B pairs: each arm takes its algorithm's switches and defaults, everything the user chose
(seeds included) is shared, and the differences between the arms can be listed."""

from __future__ import annotations

import pytest

from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.experiments.pairing import (
    AB_ALGORITHM_FIELDS,
    ab_arms,
    ab_configs,
    ab_pair_algorithms,
    arm_differences,
)


def test_ab_pair_uses_each_algorithms_defaults_and_the_same_seeds():
    data = {"algorithm": "grpo_guard", "seed": 7, "group_size": 4, "ratio_norm": True}
    (a_algo, a), (b_algo, b) = ab_configs(data)
    assert (a_algo, b_algo) == ("flow_grpo", "grpo_guard")
    assert a.seed == b.seed == 7 and a.group_size == b.group_size == 4 and a.eval_seeds == b.eval_seeds
    assert not a.ratio_norm and b.ratio_norm, "the Guard switches follow each arm's algorithm"
    assert a.clip_range != b.clip_range, "each arm gets its algorithm's clip range unless the user set one"


@pytest.mark.parametrize(("algorithm", "pair"), [("flow_grpo", ("flow_grpo", "grpo_guard")),
                                                 ("grpo_guard", ("flow_grpo", "grpo_guard")),
                                                 ("dance_grpo", ("dance_grpo", "dance_grpo_guard")),
                                                 ("dance_grpo_guard", ("dance_grpo", "dance_grpo_guard"))])
def test_dance_algorithms_pair_with_dance_and_the_rest_with_flow_grpo(algorithm, pair):
    assert ab_pair_algorithms(algorithm) == pair


def test_ab_arms_of_a_config_keep_what_the_user_set_and_rederive_the_rest():
    config = RunConfig.from_dict({"algorithm": "grpo_guard", "seed": 3, "clip_range": 2e-4, "grad_reweight": False})
    (a_algo, a), (b_algo, b) = ab_arms(config)
    assert (a_algo, a.algorithm, b_algo, b.algorithm) == ("flow_grpo", "flow_grpo", "grpo_guard", "grpo_guard")
    assert a.clip_range == b.clip_range == 2e-4 and a.seed == b.seed == 3, "explicit choices are shared"
    assert b.grad_reweight and b.ratio_norm, "the Guard arm's switches come from GRPO-Guard, not the config"
    assert a.learning_rate == RunConfig.from_dict({"algorithm": "flow_grpo"}).learning_rate, "derived fields re-derive"
    assert "learning_rate" not in a.fields_set(), "an arm records only the user's choices, like a form submit"


def test_an_arm_that_rejects_the_config_raises_naming_the_arm():
    with pytest.raises(ConfigError) as e:
        ab_configs({"algorithm": "grpo_guard", "clip_range": 0})
    assert [k for k, _ in e.value.errors] == ["clip_range"]
    assert all(msg.startswith("[flow_grpo] ") for _, msg in e.value.errors)


def test_arm_differences_list_exactly_the_fields_that_differ_in_field_order():
    (_, a), (_, b) = ab_configs({"seed": 5, "group_size": 4})
    diff = arm_differences(a, b)
    assert "algorithm" in diff and diff["algorithm"] == ("flow_grpo", "grpo_guard")
    assert {"ratio_norm", "grad_reweight"} <= set(diff) and set(AB_ALGORITHM_FIELDS) & set(diff)
    assert not {"seed", "group_size", "eval_seeds", "epochs"} & set(diff), "shared choices are not differences"
    assert list(diff) == [f for f in RunConfig.model_fields if f in diff]
    assert all(diff[f] == (a.to_dict()[f], b.to_dict()[f]) for f in diff)
    assert arm_differences(a, a) == {}

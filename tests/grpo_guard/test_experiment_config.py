"""Experiment files: arms × seeds (+ matched no-signal controls) expand into run configs that
are each validated before anything is stored; errors name ``arms.<arm>.<field>``; the YAML
round trip is exact; a base config file is confined like a prompt file."""

from __future__ import annotations

import pytest

from grpo_guard.config import ConfigError
from grpo_guard.experiments.config import CONTROL_REWARD, ExperimentConfig

EXP = """
name: guard vs flow
tags: [study]
base: {backbone: toy, epochs: 2, group_size: 2, prompts_per_epoch: 2, rewards: {toy_fg_share: 1.0}}
arms:
  flow: {algorithm: flow_grpo}
  guard: {algorithm: grpo_guard, clip_range: 2.0e-4}
seeds: [0, 1, 2]
controls: true
"""


def test_arms_times_seeds_with_controls_expand_seed_major_and_differ_only_where_they_should():
    exp = ExperimentConfig.from_yaml(EXP)
    runs = exp.expand()
    assert [(r.arm, r.seed) for r in runs[:4]] == [("flow", 0), ("flow/control", 0), ("guard", 0), ("guard/control", 0)]
    assert len(runs) == 12 and {r.seed for r in runs} == {0, 1, 2}
    by = {(r.arm, r.seed): r.config for r in runs}
    assert by[("guard", 1)].clip_range == 2e-4 and by[("guard", 1)].seed == 1
    arm, ctrl = by[("flow", 2)].to_dict(), by[("flow/control", 2)].to_dict()
    assert ctrl["rewards"] == {CONTROL_REWARD: 1.0, "toy_fg_share": 0.0}, "the arm's proxy is kept, unweighted"
    assert {k for k in arm if arm[k] != ctrl[k]} == {"rewards"}, "a control differs from its arm only in the proxy"
    assert by[("flow/control", 0)].gold == by[("flow", 0)].gold


def test_yaml_round_trip_and_overrides_and_seeds_from_the_command_line():
    exp = ExperimentConfig.from_yaml(EXP, ["epochs=3"], seeds=[5, 6])
    again = ExperimentConfig.from_yaml(exp.to_yaml())
    assert again.to_dict() == exp.to_dict()
    assert exp.seeds == [5, 6] and all(r.config.epochs == 3 for r in exp.expand())


@pytest.mark.parametrize(("text", "field"), [
    ("arms: {}", "arms"),
    ("arms: {'a/b': {}}", "arms"),
    ("base: {}\narms: {x: {}}\narmz: 1", "armz"),
    ("arms: {x: {algorithm: flow_grpo}, y: {lr: 0.1}}", "arms.y.lr"),
    ("arms: {guard: {clip_range: -1}}", "arms.guard.clip_range"),
    ("base: {epochs: 0}\narms: {x: {}}", "base.epochs"),
    ("arms: {x: {}}\nseeds: [1, 1]", "seeds"),
    ("arms: {x: {}}\nseeds: []", "seeds"),
    ("arms: [a, b]", "arms"),
    ("arms: {x: {rewards: {nope_reward: 1.0}}}", "arms.x.rewards.nope_reward"),
])
def test_a_bad_experiment_names_the_field_and_its_arm(text, field):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_yaml(text)
    assert field in [f for f, _ in e.value.errors], e.value.errors


def test_a_control_that_cannot_be_built_says_which_control():
    # the arm makes null_noise a gold evaluator: its control would optimise gold
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_yaml("arms: {x: {gold: [null_noise]}}\ncontrols: true")
    assert any(msg.startswith("[x/control]") for _, msg in e.value.errors), e.value.errors


def test_not_yaml_or_not_a_mapping_is_one_clear_error():
    for text in ("arms: {x: [", "- a\n- b"):
        with pytest.raises(ConfigError) as e:
            ExperimentConfig.from_yaml(text)
        assert len(e.value.errors) == 1


def test_a_base_config_file_is_read_beside_the_experiment_and_confined(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 2\ngroup_size: 2\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\narms: {a: {}, b: {algorithm: flow_grpo}}\n")
    exp = ExperimentConfig.from_file(str(tmp_path / "exp.yaml"))
    assert exp.base == {"epochs": 2, "group_size": 2} and exp.expand()[1].config.group_size == 2
    for bad in ("/etc/passwd", "../base.yaml", ".hidden.yaml", "~/x.yaml"):
        (tmp_path / "bad.yaml").write_text(f"base: {bad!r}\narms: {{a: {{}}}}\n")
        with pytest.raises(ConfigError) as e:
            ExperimentConfig.from_file(str(tmp_path / "bad.yaml"))
        assert [f for f, _ in e.value.errors] == ["base"], bad
    with pytest.raises(ConfigError, match="inline"):
        ExperimentConfig.from_yaml("base: base.yaml\narms: {a: {}}")


def test_hostile_yaml_goes_through_the_safe_loader(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + "arms: {x: {}}\n"
    for text in (bomb, "[" * 20_000, "arms: {x: {epochs: " + "9" * 5000 + "}}", "arms: {x: {}}\narms: {y: {}}"):
        with pytest.raises(ConfigError) as e:
            ExperimentConfig.from_yaml(text)
        assert len(str(e.value)) < 600, "one clear sentence, never the text itself"
    (tmp_path / "base.yaml").write_text(bomb.replace("arms: {x: {}}\n", ""))
    (tmp_path / "exp.yaml").write_text("base: base.yaml\narms: {x: {}}\n")
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_file(str(tmp_path / "exp.yaml"))
    assert [f for f, _ in e.value.errors] == ["base"]


def test_yaml_1_2_scalars_keep_what_the_user_typed():
    exp = ExperimentConfig.from_yaml("arms: {x: {mixed_precision: no}}")
    assert exp.expand()[0].config.mixed_precision == "no", "`no` is a string in YAML 1.2, not false"


def test_the_readme_example_is_a_valid_experiment():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as fh:
        section = fh.read().split("### Experiments", 1)[1]
    text = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    runs = ExperimentConfig.from_yaml(text).expand()
    assert len(runs) == 12 and {r.arm for r in runs} == {"flow_grpo", "flow_grpo/control", "grpo_guard",
                                                          "grpo_guard/control"}

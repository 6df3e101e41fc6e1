"""RunConfig validation: every bad field gets a message naming it; YAML round-trips."""

import pytest

from grpo_guard.config import ALGORITHM_DEFAULTS, ConfigError, RunConfig


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_yaml(text)
    return exc.value.by_field()


def test_defaults_round_trip_through_yaml():
    cfg = RunConfig()
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize("algo", sorted(ALGORITHM_DEFAULTS))
def test_algorithm_fills_its_paper_defaults(algo):
    cfg = RunConfig.from_dict({"algorithm": algo, "backbone": "sd3", "model": "/m"})
    for key, value in ALGORITHM_DEFAULTS[algo].items():
        assert getattr(cfg, key) == value, key


def test_explicit_value_beats_algorithm_default():
    cfg = RunConfig.from_yaml("algorithm: grpo_guard\nclip_range: 3.0e-6")
    assert cfg.clip_range == 3e-6
    assert cfg.with_overrides({"algorithm": "flow_grpo"}).clip_range == 3e-6


def test_switching_algorithm_rederives_unset_defaults():
    cfg = RunConfig.from_yaml("algorithm: grpo_guard")
    flow = cfg.with_overrides({"algorithm": "flow_grpo"})
    assert flow.ratio_norm is False and flow.kl_beta == ALGORITHM_DEFAULTS["flow_grpo"]["kl_beta"]


def test_unknown_key_is_named_with_a_suggestion():
    errs = _errors("group_sise: 4")
    assert "did you mean 'group_size'" in errs["group_sise"]


def test_wrong_type_is_named():
    assert "group_size" in _errors("group_size: many")


def test_yaml_that_is_not_a_mapping():
    assert "mapping" in _errors("- a\n- b")[""]


def test_broken_yaml_reports_line():
    assert "line" in _errors("a: [1, 2")[""]


def test_resolution_not_divisible_suggests_neighbours():
    assert "use 496 or 512" in _errors("backbone: sd3\nmodel: x\nresolution: 500")["resolution"]


@pytest.mark.parametrize("text,field", [
    ("learning_rate: .nan", "learning_rate"),
    ("clip_range: .inf", "clip_range"),
    ("group_size: -3", "group_size"),
    ("epochs: 100000000000", "epochs"),
    ("rewards: {toy_fg_share: -1}", "rewards.toy_fg_share"),
    ("rewards: {toy_fg_share: 0}", "rewards"),
    ("backbone: sd3", "model"),
    ("timestep_fraction: 0.05", "timestep_fraction"),
    ("train_timesteps: window\nsde_window_size: 0", "sde_window_size"),
])
def test_out_of_range_values_are_rejected(text, field):
    assert field in _errors(text)


def test_overrides_parse_yaml_values():
    cfg = RunConfig.from_yaml("", ["group_size=4", "rewards.jpeg_compressibility=0.5", "eval_seeds=[3, 4]"])
    assert cfg.group_size == 4 and cfg.rewards["jpeg_compressibility"] == 0.5 and cfg.eval_seeds == [3, 4]


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        RunConfig.from_yaml("", ["group_size"])


def test_fields_set_records_user_choices():
    assert RunConfig.from_yaml("seed: 3").fields_set() == {"seed"}


def test_config_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, grpo_guard.config, grpo_guard.training.recording, grpo_guard.rewards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the app imports these modules and must not load torch"


def test_yaml_round_trip_keeps_characters_pyyaml_writes_raw():
    """U+0085 is a line break to PyYAML's reader; to_yaml must escape it (found by hypothesis)."""
    cfg = RunConfig.from_dict({"prompts": ["\x85", "a café"]})
    assert RunConfig.from_yaml(cfg.to_yaml()).prompts == ["\x85", "a café"]

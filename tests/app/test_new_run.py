"""New run: the form is generated from RunConfig, round-trips every config, shows errors next
to their field, enqueues nothing on error, and an A/B request that an arm rejects says which arm."""

from __future__ import annotations

import pytest

from app import run_form as N
from app.pages import new_run as P
from grpo_guard.config import RunConfig


def test_every_config_field_has_a_widget_with_its_help():
    assert [f.name for f in N.FIELDS] == list(RunConfig.model_fields), "the form must cover RunConfig exactly"
    for f in N.FIELDS:
        assert f.help == RunConfig.model_fields[f.name].description, f"{f.name}: help must come from the field docs"
        assert f.group in RunConfig.field_groups()
    kinds = {f.name: f.kind for f in N.FIELDS}
    assert kinds["algorithm"] == "choice" and kinds["ratio_norm"] == "tristate" and kinds["rewards"] == "yaml"
    assert kinds["group_size"] == "int" and kinds["clip_range"] == "float"
    assert {f.name for f in N.FIELDS if f.auto} >= {"clip_range", "learning_rate", "dynamics", "ratio_norm"}


def test_the_default_form_is_the_default_config():
    cfg, data, errors = N.validate(N.form_values())
    assert errors == {} and data == {}, "an untouched form chooses nothing"
    assert cfg == RunConfig.from_dict({})


@pytest.mark.parametrize("label", list(N.PRESETS))
def test_presets_are_valid_and_round_trip_through_the_form(label):
    raw = N.load_preset(label)
    cfg, data, errors = N.validate(N.form_values(raw))
    assert errors == {}, f"preset {label} does not validate: {errors}"
    assert cfg == RunConfig.from_dict(raw), "the form must reproduce the preset exactly"
    assert set(data) <= set(raw), "the form must not invent choices the preset did not make"


def test_a_stored_config_round_trips_with_derived_fields_left_auto():
    """A clone shows the parent's choices; fields the algorithm derived stay 'auto', so switching
    the algorithm re-derives them."""
    parent = RunConfig.from_dict({"algorithm": "flow_grpo", "group_size": 4, "clip_range": 5e-4,
                                  "rewards": {"toy_fg_share": 1.0, "toy_alignment": 0.0}, "eval_seeds": [3, 4]})
    values = N.form_values(parent.to_dict(), set(parent.fields_set()))
    cfg, data, errors = N.validate(values)
    assert errors == {} and cfg == parent
    assert values[N.FIELD_NAMES.index("learning_rate")] == "", "a derived field the user did not set shows auto"
    assert values[N.FIELD_NAMES.index("clip_range")] == "0.0005"
    i = N.FIELD_NAMES.index("algorithm")
    values[i] = "grpo_guard"
    cfg2, _, _ = N.validate(values)
    assert cfg2.ratio_norm and cfg2.learning_rate == 1e-4 and cfg2.clip_range == 5e-4


def test_every_error_is_reported_at_once_next_to_its_field():
    values = N.form_values()
    values[N.FIELD_NAMES.index("group_size")] = 1
    values[N.FIELD_NAMES.index("rewards")] = "{toy_fg_share: -1}"
    values[N.FIELD_NAMES.index("eval_seeds")] = "[0, 1"
    values[N.FIELD_NAMES.index("clip_range")] = "abc"
    cfg, _, errors = N.validate(values)
    assert cfg is None
    # widget-level (YAML, number), schema and cross-field errors together, not one stage at a time
    assert set(errors) == {"eval_seeds", "clip_range", "group_size", "rewards"}, errors
    assert "YAML" in errors["eval_seeds"] and "not a number" in errors["clip_range"]
    assert "greater than or equal to 2" in errors["group_size"]
    assert "toy_fg_share" in errors["rewards"], "a sub-key error names the key and shows under its field"
    html = P._errors_html(errors)
    assert "Nothing was enqueued" in html and all(k in html for k in errors)
    values[N.FIELD_NAMES.index("eval_seeds")] = "[0, 1]"
    values[N.FIELD_NAMES.index("clip_range")] = ""
    values[N.FIELD_NAMES.index("group_size")] = 4
    values[N.FIELD_NAMES.index("rewards")] = "{toy_fg_share: 1}"
    cfg, _, errors = N.validate(values)
    assert cfg is not None and errors == {}


def test_ab_box_lists_the_fields_in_which_the_arms_differ():
    info = N.ab_info(N.form_values())
    assert "same config" not in info
    for field in ("learning_rate", "clip_range", "std_scope", "kl_beta", "ratio_norm", "grad_reweight", "delta"):
        assert field in info, f"{field} differs between the default arms but is not listed: {info}"
    assert "7 fields" in info and "0.0008 vs 0.00015" in info
    chosen = N.ab_info(N.form_values({"learning_rate": 1e-4, "kl_beta": 0.0}))
    assert "5 fields" in chosen and "learning_rate" not in chosen, "a field the user set is shared by both arms"
    dance = N.ab_info(N.form_values({"algorithm": "dance_grpo_guard"}))
    assert dance.startswith("dance_grpo vs dance_grpo_guard") and "beta_over_dt" in dance


def test_after_an_enqueue_the_browser_goes_to_the_run_or_the_pairs_compare_page():
    assert N.after_submit_url([7]) == "run?run=7"
    assert N.after_submit_url([7, 8]) == "compare?runs=7,8"


def test_backbone_needs_a_model_error_lands_on_model():
    values = N.form_values({"backbone": "sd3"})
    _, _, errors = N.validate(values)
    assert "model" in errors and "needs `model`" in errors["model"]


def test_an_ab_request_that_one_arm_rejects_shows_under_the_field_with_its_arm():
    configs, errors = N.ab_form_configs({"algorithm": "grpo_guard", "clip_range": 0})
    assert configs == [] and set(errors) == {"clip_range"}
    assert errors["clip_range"].startswith("[flow_grpo] "), "the message says which arm refused it"
    configs, errors = N.ab_form_configs({"epochs": 3})
    assert errors == {} and [algo for algo, _ in configs] == ["flow_grpo", "grpo_guard"]


def test_exported_yaml_reloads_to_the_same_config():
    for cfg in (RunConfig.from_dict(N.load_preset("SD3.5-M GRPO-Guard")),
                RunConfig.from_dict({"algorithm": "flow_grpo", "group_size": 4})):
        text = N.config_yaml(cfg)
        assert RunConfig.from_yaml(text) == cfg
    assert "learning_rate" not in text, "derived values are left out so they follow the algorithm"


def test_uploaded_yaml_fills_the_form_and_reports_problems(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("algorithm: flow_grpo\ngroup_size: 4\nbogus: 1\n")
    values, errors = N.read_uploaded_yaml(str(good))
    assert values[N.FIELD_NAMES.index("algorithm")] == "flow_grpo" and values[N.FIELD_NAMES.index("group_size")] == 4
    assert errors == {"": "unknown keys ignored: bogus"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("group_size: [1\n")
    values, errors = N.read_uploaded_yaml(str(bad))
    assert values is None and "not valid YAML" in errors[""]
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    assert "mapping" in N.read_uploaded_yaml(str(listy))[1][""]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("group_size: 1\n")
    values, errors = N.read_uploaded_yaml(str(wrong))
    assert values is not None and "group_size" in errors, "a bad value is loaded and marked, not refused"


@pytest.mark.parametrize("label", list(N.PRESETS))
def test_every_preset_is_exactly_its_example(label):
    """One source of truth: a preset's file is the example of the same name, byte for byte."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    preset = os.path.join(N.PRESET_DIR, N.PRESETS[label])
    example = os.path.join(root, "examples", N.PRESETS[label])
    with open(preset, "rb") as a, open(example, "rb") as b:
        assert a.read() == b.read(), f"preset {label} differs from examples/{N.PRESETS[label]}"
    assert RunConfig.from_dict(N.load_preset(label)) == RunConfig.from_file(example)


def test_the_ema_hint_says_after_which_epoch_eval_leaves_the_base_model():
    from app.run_form import ema_info, form_values

    base = {"epochs": 6, "group_size": 4, "prompts_per_epoch": 2, "train_batch_size": 8, "ema_every": 8}
    short = ema_info(form_values(base, set(base)))
    assert "1 optimizer step(s) per epoch" in short and "after epoch 8" in short and "beyond epochs=6" in short
    ok = ema_info(form_values({**base, "ema_every": 1}, set(base)))
    assert "after epoch 1" in ok and "⚠" not in ok

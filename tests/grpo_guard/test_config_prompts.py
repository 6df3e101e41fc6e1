"""RunConfig and prompts: inline metadata items, unknown sets and GenEval scorers without
metadata are one sentence naming the field; submit inlines geneval:file: with its metadata;
resolved_prompts names the field whose file or dataset cannot be read."""

from __future__ import annotations

import json
import re

import pytest

from grpo_guard.config import ConfigError, RunConfig, prompt_file_problem

ROW = {"prompt": "a photo of a red dog", "tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}


def _errors(**kw) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict(kw)
    return exc.value.by_field()


def test_list_items_may_be_mappings_with_metadata_and_round_trip_through_yaml():
    cfg = RunConfig.from_dict({"prompts": ["a cat", ROW], "eval_prompts": [ROW]})
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    train, evals = cfg.resolved_prompts()
    assert train[1].meta == {k: v for k, v in ROW.items() if k != "prompt"} and evals == ["a photo of a red dog"]


@pytest.mark.parametrize("items, field, match", [
    (["a", {"tag": "colors"}], "prompts", "item 1 needs a non-empty 'prompt' text"),
    (["a", {"prompt": "b", "colour": "red"}], "prompts", "item 1 has unknown key\\(s\\) 'colour'"),
    ([{"prompt": "b", "include": [{"class": "dog", "count": -1}]}], "eval_prompts", "item 0 include\\[0\\].count"),
])
def test_a_malformed_item_names_the_field_and_the_index(items, field, match):
    errors = _errors(**{field: items})
    assert list(errors) == [field]
    assert re.search(match, errors[field]), errors[field]


def test_an_unknown_prompt_set_lists_the_known_ones():
    msg = _errors(eval_prompts="ocr:valid")["eval_prompts"]
    assert msg.startswith("unknown prompt set 'ocr:valid'; known: ")
    for name in ("ocr:test", "geneval:test", "toy:heldout", "hf:DATASET[:SPLIT][#COLUMN]"):
        assert name in msg


def test_a_geneval_reward_needs_prompts_with_geneval_metadata():
    errors = _errors(rewards={"geneval": 1.0}, gold=[], prompts="ocr:train", eval_prompts="geneval:test")
    assert list(errors) == ["prompts"] and "carries none" in errors["prompts"] and "geneval:train" in errors["prompts"]
    errors = _errors(rewards={"toy_fg_share": 1.0}, gold=["geneval"], prompts="ocr:train", eval_prompts=["a cat"])
    assert list(errors) == ["eval_prompts"], "a gold evaluator only scores eval prompts"
    RunConfig.from_dict({"rewards": {"geneval": 1.0}, "gold": [], "prompts": "geneval:train",
                         "eval_prompts": "geneval:file:evaluation_metadata.jsonl"})
    RunConfig.from_dict({"gold": ["geneval"], "eval_prompts": [ROW]})


def test_a_geneval_scorer_with_its_own_metadata_file_takes_plain_prompts():
    """The reward option `metadata` (an evaluation_metadata.jsonl) looks plain prompts up by text."""
    RunConfig.from_dict({"backbone": "sd3", "model": "m", "rewards": {"geneval": 1.0}, "gold": [],
                         "prompts": ["a photo of a dog"], "eval_prompts": ["a photo of a dog"],
                         "reward_options": {"geneval": {"metadata": "evaluation_metadata.jsonl"}}})
    errors = _errors(backbone="sd3", model="m", rewards={"toy_fg_share": 1.0, "geneval": 0.0}, gold=["geneval"],
                     prompts=["a cat"], eval_prompts=["a cat"], reward_options={"geneval": {"threshold": 0.5}})
    assert list(errors) == ["prompts", "eval_prompts"], "an option other than metadata does not excuse the prompts"


def test_resolved_prompts_names_the_field_that_cannot_be_read(tmp_path):
    cfg = RunConfig.from_dict({"eval_prompts": f"file:{tmp_path}/missing.txt"})
    with pytest.raises(ConfigError) as e:
        cfg.resolved_prompts()
    assert [f for f, _ in e.value.errors] == ["eval_prompts"] and "cannot read prompt file" in str(e.value)


def test_submit_inlines_a_geneval_file_with_its_metadata(tmp_path):
    f = tmp_path / "evaluation_metadata.jsonl"
    f.write_text(json.dumps(ROW) + "\n", encoding="utf-8")
    assert prompt_file_problem(f"geneval:file:{f}") and prompt_file_problem("geneval:file:data/m.jsonl") is None
    cfg = RunConfig.from_dict({"gold": ["geneval"], "eval_prompts": f"geneval:file:{f}"})
    inlined = cfg.with_prompt_files_inlined(config_dir=str(tmp_path))  # as submit: the config's directory
    assert inlined.eval_prompts == [ROW]
    assert inlined.resolved_prompts()[1][0].meta == cfg.resolved_prompts()[1][0].meta


def test_validation_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys; from grpo_guard.config import RunConfig as R; "
            "R.from_dict({'prompts': 'geneval:train', 'eval_prompts': 'ocr:test'}); "
            "print(sorted(m for m in ('torch', 'datasets', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shared_training_and_eval_prompts_get_a_warning_not_an_error():
    from grpo_guard.config import RunConfig

    cfg = RunConfig(prompts=["a red circle on a blue background", "a green square on a red background"],
                    eval_prompts=["a red circle on a blue background"])
    assert "1 of the 1 eval prompts are also training prompts" in cfg.prompt_overlap_warning()
    assert RunConfig(prompts="toy:train", eval_prompts="toy:heldout").prompt_overlap_warning() is None
    assert RunConfig(prompts="geneval:train", eval_prompts="geneval:test", backbone="sd3", model="/m",
                     rewards={"geneval": 1.0}).prompt_overlap_warning() is None


def test_config_validate_prints_the_overlap_warning_and_still_validates(tmp_path):
    from click.testing import CliRunner

    from grpo_guard.cli import main
    from grpo_guard.config import RunConfig

    same = ["a red circle on a blue background", "a green square on a red background"]
    path = tmp_path / "overlap.yaml"
    path.write_text(RunConfig.from_dict({"prompts": same, "eval_prompts": same[:1]}).to_yaml())
    res = CliRunner().invoke(main, ["config", "validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "Warning: 1 of the 1 eval prompts are also training prompts" in res.output
    path.write_text(RunConfig.from_dict({"prompts": same[1:], "eval_prompts": same[:1]}).to_yaml())
    assert "Warning" not in CliRunner().invoke(main, ["config", "validate", str(path)]).output

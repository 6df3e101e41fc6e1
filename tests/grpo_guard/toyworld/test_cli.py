"""`grpo-guard toy ...` commands: prompt listing and a minimal measurement of the shipped model."""

import json

from click.testing import CliRunner

from grpo_guard.cli import main


def test_toy_prompts_lists_a_named_set():
    res = CliRunner().invoke(main, ["toy", "prompts", "toy:heldout"])
    assert res.exit_code == 0 and len(res.output.splitlines()) == 24
    bad = CliRunner().invoke(main, ["toy", "prompts", "toy:nope"])
    assert bad.exit_code == 2 and "unknown prompt set" in bad.output


def test_toy_measure_reports_accuracies(tmp_path):
    out = tmp_path / "m.json"
    res = CliRunner().invoke(main, ["toy", "measure", "--prompts-per-split", "1", "--seeds", "1", "--steps", "4",
                                    "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fg_color_acc" in res.output and "heldout (model)" in res.output
    data = json.loads(out.read_text())
    assert set(data["splits"]) == {"train", "heldout"} and data["splits"]["train"]["images"] == 1

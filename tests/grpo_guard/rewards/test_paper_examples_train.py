"""The shipped GenEval and PickScore examples train one epoch through ``grpo-guard train`` on tiny random
weights: a tiny SD3 pipeline, Mask2Former + CLIP for geneval, CLIP for pickscore / hpsv2 and BLIP
for imagereward, all built in code. The run is shrunk with overrides, and the prompts come from a
GenEval ``evaluation_metadata.jsonl`` (the reward's ``metadata`` option) so the test does not
depend on the ``geneval:*`` / ``hf:`` prompt sets."""

import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.models.testing import tiny_sd3_pipeline_dir
from grpo_guard.recording import read_jsonl
from grpo_guard.rewards.testing import tiny_blip_dir, tiny_clip_dir, tiny_mask2former_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROWS = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
         "prompt": "a photo of two cats"}]
SHRINK = dict(resolution=32, num_steps=3, eval_num_steps=2, group_size=2, prompts_per_epoch=2, train_batch_size=4,
              gradient_accumulation_steps=1, epochs=1, eval_every=1, checkpoint_every=1, lora_rank=4,
              mixed_precision="no")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    meta = root / "evaluation_metadata.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    clip = tiny_clip_dir(root)
    return {"model": tiny_sd3_pipeline_dir(root),
            "geneval": {"detector_path": tiny_mask2former_dir(root), "clip_path": clip, "metadata": str(meta),
                        "threshold": 0.001, "counting_threshold": 0.001, "device": "cpu"},
            "pickscore": {"path": clip}, "hpsv2": {"path": clip}, "imagereward": {"path": tiny_blip_dir(root)}}


@pytest.mark.parametrize("example", ["sd35m_geneval_grpo_guard.yaml", "sd35m_geneval_flow_grpo.yaml",
                                     "sd35m_pickscore_grpo_guard.yaml"])
def test_paper_example_trains_one_epoch_on_tiny_weights(example, weights, tmp_path):
    with open(os.path.join(ROOT, "examples", example), encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    cfg.update(SHRINK, model=weights["model"], prompts=[r["prompt"] for r in ROWS],
               eval_prompts=[r["prompt"] for r in ROWS])
    names = [*cfg["rewards"], *cfg["gold"]]
    cfg["reward_options"] = {n: {**cfg.get("reward_options", {}).get(n, {}), **weights[n]} for n in names}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(path), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    scalars = {k: v for r in read_jsonl(str(out / "scalars.jsonl")) for k, v in r.items()}
    for name in cfg["rewards"]:
        assert f"reward/{name}/mean" in scalars and f"eval/{name}" in scalars, name
    for name in cfg["gold"]:
        assert f"eval/{name}" in scalars, name
    assert "eval/gold" in scalars
    if "geneval" in cfg["rewards"]:
        for key in ("eval/geneval/strict", "eval/geneval/single_object", "eval/geneval/counting"):
            assert key in scalars, key
        assert 0 <= scalars["eval/geneval/strict"] <= 1 and "eval/geneval/position" not in scalars

"""Every shipped example trains one epoch through ``grpo-guard train EXAMPLE --set model=DIR`` on
tiny random weights built in code: a tiny SD3 or FLUX pipeline (the toy examples use the shipped
toy model), Mask2Former + CLIP for geneval, CLIP for pickscore / hpsv2 and BLIP for imagereward,
rapidocr's bundled models for ocr. The example's own prompt sets are used for training (ocr:train,
geneval:train, and the PickScore example's Hugging Face dataset from a tiny hub-cache snapshot
written here); eval is cut to two prompts of its own eval set, metadata kept. Only sizes are
overridden, so a missing file, an unknown key or a reward that cannot score the example's prompts
fails here."""

import glob
import json
import os

import pytest
import yaml
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.models.testing import tiny_flux_pipeline_dir, tiny_sd3_pipeline_dir
from grpo_guard.prompts import prompt_to_item, resolve_prompts
from grpo_guard.rewards.testing import tiny_blip_dir, tiny_clip_dir, tiny_mask2former_dir
from grpo_guard.training.recording import read_jsonl
from tests.grpo_guard.test_trainer import one_thread  # noqa: F401  (one torch thread, autouse)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "examples", "*.yaml")))
# Sizes only: every other key (rewards, gold, prompt sets, algorithm) is the example's own.
SHRINK = ["resolution=32", "num_steps=3", "eval_num_steps=2", "group_size=2", "prompts_per_epoch=2",
          "train_batch_size=4", "gradient_accumulation_steps=1", "epochs=1", "eval_every=1", "checkpoint_every=1",
          "lora_rank=4", "mixed_precision=no", "eval_seeds=[0]"]
CAPTIONS = {"train": ["a red bus in the rain", "a cat wearing a hat", "a lighthouse at dusk"],
            "test_unique": ["a bowl of ramen", "an owl on a fence"]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    clip = tiny_clip_dir(root)
    return {"sd3": tiny_sd3_pipeline_dir(root / "sd3"), "flux": tiny_flux_pipeline_dir(root / "flux"),
            "options": {"geneval": {"detector_path": tiny_mask2former_dir(root), "clip_path": clip,
                                    "threshold": 0.001, "counting_threshold": 0.001, "device": "cpu"},
                        "pickscore": {"path": clip}, "hpsv2": {"path": clip}, "imagereward": {"path": tiny_blip_dir(root)}}}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The PickScore example's dataset as ``hf download`` lays it out in HF_HUB_CACHE (tiny)."""
    import huggingface_hub.constants as hc

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--yuvalkirstain--pickapic_v1_no_images"
    (repo / "snapshots" / sha / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for split, caps in CAPTIONS.items():
        (repo / "snapshots" / sha / "data" / f"{split}-00000-of-00001.jsonl").write_text(
            "".join(json.dumps({"caption": c, "best_image_uid": "x"}) + "\n" for c in caps))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_every_example_is_covered():
    assert {"sd35m_geneval_grpo_guard.yaml", "sd35m_geneval_flow_grpo.yaml", "sd35m_pickscore_grpo_guard.yaml",
            "sd35m_grpo_guard.yaml", "sd35m_flow_grpo.yaml", "flux_dance_grpo_guard.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_trains_one_epoch_on_tiny_weights(example, weights, hub_cache, tmp_path):
    with open(os.path.join(ROOT, "examples", example), encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    names = [*cfg["rewards"], *cfg["gold"]]
    sets = [f"eval_prompts={json.dumps([prompt_to_item(p) for p in resolve_prompts(cfg['eval_prompts'])[:2]])}"]
    sets += [f"model={weights[cfg['backbone']]}"] if cfg["backbone"] != "toy" else []
    sets += [f"reward_options.{n}.{k}={v}" for n in names for k, v in weights["options"].get(n, {}).items()]
    out = tmp_path / "run"
    args = ["train", os.path.join(ROOT, "examples", example), "--out", str(out), "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, *(a for s in [*SHRINK, *sets] for a in ("--set", s))],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    scalars = {k: v for r in read_jsonl(str(out / "scalars.jsonl")) for k, v in r.items()}
    for name in cfg["rewards"]:
        assert f"reward/{name}/mean" in scalars and f"eval/{name}" in scalars, f"{example}: proxy {name} not recorded"
    for name in cfg["gold"]:
        assert f"eval/{name}" in scalars, f"{example}: gold {name} not recorded"
    assert "eval/gold" in scalars and os.listdir(out / "samples"), f"{example}: no eval recorded"
    if "geneval" in cfg["rewards"]:
        assert 0 <= scalars["eval/geneval/overall"] <= 1, "GenEval Overall is not logged at eval"
        assert 0 <= scalars["eval/geneval/image_mean"] <= 1, "GenEval's image mean is not logged at eval"
        rows = read_jsonl(str(out / "samples.jsonl"))
        assert all(r.get("prompt_meta", {}).get("tag") for r in rows), "eval samples lost their GenEval metadata"

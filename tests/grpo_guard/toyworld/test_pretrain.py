"""`toy pretrain` end to end on a seconds-long budget: writes a loadable fp16 pipeline, the
scorers and the loss log; the toy backbone and the reward loaders read it."""

import json
import os

import numpy as np
import pytest
import torch

from grpo_guard.toyworld.pretrain import PretrainSettings, pretrain


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pretrain") / "toy")
    summary = pretrain(PretrainSettings(out=out, vae_seconds=0.5, scorer_seconds=0.5, transformer_seconds=0.5,
                                        latent_bank=32, scorer_bank=8, scorer_check=8, vae_eval=16, check_prompts=0, progress=False,
                                        threads=torch.get_num_threads()))
    return out, summary


def test_pretrain_writes_pipeline_scorers_and_logs(tiny_run):
    out, summary = tiny_run
    for rel in ("model_index.json", "transformer/config.json", "vae/config.json", "tokenizer/tokenizer.json",
                "tokenizer_3/tokenizer.json", "toy_fidelity/model.safetensors", "toy_classifier/config.json",
                "pretrain_log.jsonl", "toyworld.json"):
        assert os.path.exists(os.path.join(out, rel)), rel
    with open(os.path.join(out, "pretrain_log.jsonl"), encoding="utf-8") as fh:
        stages = {json.loads(line)["stage"] for line in fh}
    assert {"vae_eval", "scorers_eval"} <= stages
    with open(os.path.join(out, "toyworld.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    assert meta["transformer"]["steps"] >= 1 and len(meta["heldout_prompts"]) == 24
    assert summary["vae"]["scaling_factor"] > 0


def test_weights_ship_in_fp16_and_load_as_float32(tiny_run):
    from safetensors import safe_open

    from grpo_guard.models.toy import ToyBackbone

    out, _ = tiny_run
    with safe_open(os.path.join(out, "transformer", "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    bb = ToyBackbone.load(out, device="cpu")
    assert all(p.dtype == torch.float32 for p in bb.transformer.parameters())
    x = torch.randn(2, *bb.latent_shape(32))
    v = bb.velocity(x, torch.tensor([0.9, 0.3]), bb.encode_prompts(["a red circle on a blue background"] * 2),
                    cfg_scale=4.0)
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert bb.decode(x).shape == (2, 32, 32, 3)


def test_rewards_can_load_scorers_from_a_pretrain_dir(tiny_run):
    from grpo_guard.rewards import build_reward

    out, _ = tiny_run
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    prompts = ["a red circle on a blue background"] * 2
    for name in ("toy_fidelity", "toy_classifier_confidence"):
        s = build_reward(name, model_dir=out)(imgs, prompts)
        assert s.shape == (2,) and np.all((s >= 0) & (s <= 1)), name


def test_missing_scorer_says_how_to_fix(tmp_path):
    from grpo_guard.rewards import build_reward

    with pytest.raises(FileNotFoundError, match="toy pretrain"):
        build_reward("toy_fidelity", model_dir=str(tmp_path))

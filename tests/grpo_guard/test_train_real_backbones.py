"""One full epoch of ``grpo-guard train --set model=<dir>`` on tiny random SD3 and FLUX
pipelines saved in code, scored by the real ``clipscore`` reward (tiny random CLIP, via
``GG_REWARD_CLIPSCORE_PATH``) with ``pickscore`` as the gold evaluator. Afterwards the
checkpoint's LoRA weights have moved off their initialisation while the base model (the adapter
disabled) is still exactly the saved pipeline."""

import os

import pytest
import torch
import yaml
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.models.testing import tiny_flux_pipeline_dir, tiny_sd3_pipeline_dir
from grpo_guard.rewards.testing import tiny_clip_dir
from grpo_guard.training.checkpoint import load_checkpoint

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("backbone, algorithm, builder", [
    ("sd3", "grpo_guard", tiny_sd3_pipeline_dir),
    ("flux", "dance_grpo_guard", tiny_flux_pipeline_dir),
])
def test_one_epoch_through_the_cli_moves_only_the_lora(backbone, algorithm, builder, clip_dir, tmp_path,
                                                       monkeypatch):
    model_dir = builder(tmp_path)
    monkeypatch.setenv("GG_REWARD_CLIPSCORE_PATH", clip_dir)
    monkeypatch.setenv("GG_REWARD_PICKSCORE_PATH", clip_dir)
    cfg = dict(backbone=backbone, model="set-on-the-command-line", algorithm=algorithm,
               resolution=32,                      # tiny VAE: 16×16 latents
               num_steps=4, eval_num_steps=3,       # a few steps keep the epoch under a few seconds
               group_size=2, prompts_per_epoch=2,   # 2 groups of 2: the smallest batch with advantages
               train_batch_size=4, epochs=1, lora_rank=4, lora_alpha=8.0,
               learning_rate=1e-2, clip_range=1e-2,  # big enough to move LoRA in one step
               prompts=PROMPTS, eval_prompts=PROMPTS[:1], eval_seeds=[0],
               rewards={"clipscore": 1.0}, gold=["pickscore"])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(path), "--set", f"model={model_dir}", "--out", str(out),
                                    "--device", "cpu"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "succeeded after 1 epochs" in res.output
    ckpt = load_checkpoint(str(out / "checkpoints"))
    assert ckpt.step == 1 and ckpt.config.backbone == backbone and ckpt.config.model == model_dir

    from grpo_guard.models import build_backbone

    bb = build_backbone(ckpt.config, device="cpu")
    x = torch.randn(2, *bb.latent_shape(32), generator=torch.Generator().manual_seed(0))
    sigma, emb = torch.tensor([0.9, 0.5]), bb.encode_prompts(PROMPTS)
    v_base = bb.velocity(x, sigma, emb, cfg_scale=ckpt.config.cfg_scale)
    bb.add_lora(4, 8.0, ckpt.config.lora_targets)
    lora_b = {k: v for k, v in ckpt.trainable.items() if "lora_B" in k}
    still_zero = [k for k, v in lora_b.items() if not v.abs().sum() > 0]
    # B starts at 0; only a projection with no path to the output (SD3's last, context-pre-only
    # block discards its context queries) may legitimately keep a zero gradient.
    assert lora_b and len(still_zero) <= len(lora_b) // 10, f"LoRA B tensors that did not train: {still_zero}"
    bb.load_trainable_state_dict(ckpt.trainable)
    v_tuned = bb.velocity(x, sigma, emb, cfg_scale=ckpt.config.cfg_scale)
    assert not torch.equal(v_tuned, v_base), "the trained adapter does not change the model"
    with bb.reference():
        assert torch.equal(bb.velocity(x, sigma, emb, cfg_scale=ckpt.config.cfg_scale), v_base), \
            "the base model changed"
    scalars = (out / "scalars.jsonl").read_text()
    assert "reward/clipscore/mean" in scalars and "eval/gold" in scalars
    assert os.listdir(out / "samples"), "no eval images were written"

"""Prompt metadata travels from the config through rollouts and eval to the rewards and into the
recorded eval samples; a prompt spec that cannot be resolved stops a run before any model loads
(exit 2 from ``grpo-guard train``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.models.sd3 import SD3Backbone
from grpo_guard.models.testing import tiny_sd3_pipeline_dir
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from grpo_guard.training.trainer import train

ROWS = [{"prompt": "a photo of two dogs", "tag": "counting", "include": [{"class": "dog", "count": 2}],
         "exclude": [{"class": "dog", "count": 3}]},
        {"prompt": "a photo of a red cat", "tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}]
META = {r["prompt"]: {k: v for k, v in r.items() if k != "prompt"} for r in ROWS}


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return tiny_sd3_pipeline_dir(tmp_path_factory.mktemp("tiny"))


def test_rewards_and_eval_samples_see_each_prompts_metadata(pipe_dir, tmp_path):
    seen: list[tuple[str, dict]] = []

    def meta_reward(images, prompts):
        seen.extend((str(p), dict(getattr(p, "meta", None) or {})) for p in prompts)
        return np.array([float(len(getattr(p, "meta", {}).get("include", []))) for p in prompts]) + images[..., 0].mean(axis=(1, 2)) / 255

    cfg = RunConfig.from_dict(dict(
        backbone="sd3", model=pipe_dir, resolution=32, num_steps=4, eval_num_steps=3, group_size=2,
        prompts_per_epoch=2, train_batch_size=4, epochs=1, eval_every=1, checkpoint_every=10, lora_rank=4,
        lora_alpha=8.0, prompts=ROWS, eval_prompts=ROWS[1:], eval_seeds=[0], rewards={"meta": 1.0}, gold=[]))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        backbone = SD3Backbone(copy.deepcopy(SD3Backbone.load(pipe_dir).pipe), device="cpu")
        rec = MemoryRecorder(str(tmp_path / "ckpt"))
        train(cfg, rec, MemoryControl(), backbone=backbone, rewards={"meta": meta_reward})
    finally:
        torch.set_num_threads(before)
    assert seen and all(meta == META[text] for text, meta in seen), "a reward got a prompt without its metadata"
    assert {t for t, _ in seen} == set(META), "training rollouts were not scored"
    samples = list(rec.samples.values())
    assert samples and all(s.prompt_meta == META["a photo of a red cat"] for s in samples)


def test_an_unreadable_prompt_spec_fails_before_the_model_loads(tmp_path):
    cfg = RunConfig.from_dict({"backbone": "sd3", "model": str(tmp_path / "no-model"), "rewards": {"x": 1.0}, "gold": [],
                               "prompts": "hf:nobody/not-cached-prompts"})
    with pytest.raises(ConfigError) as e:  # a model load would raise ModelNotFoundError instead
        train(cfg, MemoryRecorder(str(tmp_path)), MemoryControl())
    assert [f for f, _ in e.value.errors] == ["prompts"] and "hf download --repo-type dataset" in str(e.value)


def test_cli_train_exits_2_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"backbone: sd3\nmodel: {tmp_path / 'no-model'}\neval_prompts: file:{tmp_path / 'gone.txt'}\n"
                   "rewards: {ocr: 1.0}\ngold: []\nepochs: 1\n")
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "eval_prompts: cannot read prompt file" in res.output and "Traceback" not in res.output
    cfg.write_text("rewards: {geneval: 1.0}\ngold: []\nprompts: ocr:train\neval_prompts: geneval:test\n")
    res = CliRunner().invoke(main, ["train", str(cfg), "--out", str(tmp_path / "run2")])
    assert res.exit_code == 2 and "prompts: geneval scores prompts by their GenEval metadata" in res.output

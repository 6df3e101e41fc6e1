"""UnifiedReward, the Qwen2.5-VL judge, on tiny random Qwen2-VL and Qwen2.5-VL models built in code
(no hub)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from grpo_guard.rewards import REGISTRY, build_reward
from grpo_guard.rewards.testing import tiny_qwen_vl_dir
from grpo_guard.rewards.unifiedreward import parse_score

PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a photo of a cat"]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def judge_dir(request, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return tiny_qwen_vl_dir(tmp_path_factory.mktemp("uni"), arch=request.param, name=request.param)


@pytest.mark.parametrize("answer, score", [
    ("The image matches the caption well.\nFinal Score: 4", 4.0),
    ("Alignment is weak. Final Score:2.5", 2.5),
    ("Final Score: 3 ... on reflection, Final Score: 5", 5.0),   # the last one counts
    ("Final Score: 7", math.nan),                                # outside 1-5: not a score
    ("I cannot judge this image.", math.nan),                    # no score: NaN, never a made-up 0
])
def test_the_score_rule(answer, score):
    got = parse_score(answer)
    assert (math.isnan(got) and math.isnan(score)) or got == score, (answer, got)


def test_it_is_registered_for_real_backbones_as_proxy_or_gold():
    spec = REGISTRY["unifiedreward"]
    assert spec.kind == "any" and spec.backbones == ("sd3", "flux")
    assert dict(spec.options)["score"] == "generate|logits"


def test_logits_rule_scores_every_image_in_one_to_five_batched(judge_dir):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    judge = build_reward("unifiedreward", path=judge_dir, score="logits", batch_size=2, device="cpu")
    s = judge(imgs, PROMPTS)
    assert s.shape == (3,) and np.all((s >= 1) & (s <= 5)), s
    one = build_reward("unifiedreward", path=judge_dir, score="logits", batch_size=1, device="cpu")(imgs, PROMPTS)
    assert np.allclose(s, one, atol=1e-5), "left-padded batches must score as single images do"


def test_the_judge_sees_the_image_at_its_m_rope_grid_positions(judge_dir):
    """Qwen-VL places the image tokens on a (t, h, w) grid (M-RoPE) only when told which tokens are
    the image's: a 32 px image is 2×2 merged tokens spanning 2 positions, so the text after it
    starts 2 earlier than with 1-D positions (rope_deltas -2). Plain positions would feed the real
    judge a scrambled image; Qwen2-VL would refuse to run."""
    imgs = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    judge = build_reward("unifiedreward", path=judge_dir, score="logits", batch_size=1, device="cpu")
    want = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
    assert type(judge.model).__name__ == want[os.path.basename(judge_dir)]
    judge(imgs, PROMPTS[:1])
    deltas = judge.model.model.rope_deltas
    assert deltas is not None and deltas.tolist() == [[-2]], deltas


def test_generate_rule_answers_every_image_and_an_unparsed_answer_is_nan(judge_dir):
    imgs = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    judge = build_reward("unifiedreward", path=judge_dir, batch_size=2, max_new_tokens=4, device="cpu")
    answers = judge.answers(imgs, PROMPTS[:2])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    scores, extras = judge.details(imgs, PROMPTS[:2])
    expect = np.array([parse_score(a) for a in answers])
    assert np.array_equal(np.isnan(scores), np.isnan(expect)) and np.array_equal(extras["parsed"], ~np.isnan(expect))


def test_missing_weights_say_where_to_put_them(monkeypatch, tmp_path):
    from grpo_guard.models.base import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="GG_REWARD_UNIFIEDREWARD_PATH"):
        build_reward("unifiedreward")

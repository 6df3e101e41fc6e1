"""Evaluation's scoring: rewards with ``details`` are scored once and their breakdowns logged as
``eval/<name>/<key>`` (GenEval's strict and per-family accuracy), families absent from the eval
set left out; end to end through a one-epoch run on the tiny SD3 pipeline."""

import numpy as np
import pytest

from grpo_guard.rewards.geneval import Detection, GenEvalReward
from grpo_guard.training.evaluation import score_images
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from grpo_guard.training.trainer import train
from tests.grpo_guard.test_trainer import (  # noqa: F401
    PROMPTS,
    fresh_backbone,
    green,
    loaded,
    make_config,
    one_thread,
    pipe_dir,
)

DOG = {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
COUNT = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}


def geneval_with_one_dog(table) -> GenEvalReward:
    """The real reward class with a code-only detector that always finds one confident dog."""
    return GenEvalReward(metadata=table, detector=lambda imgs: [[Detection("dog", 0.99, (2, 2, 12, 12))] for _ in imgs],
                         colour_of=lambda img, objs, cls: ["red"] * len(objs))


def test_details_are_scored_once_and_averaged_over_the_images_they_apply_to():
    calls = []

    class Counted:
        def details(self, images, prompts):
            calls.append(len(prompts))
            return np.array([0.5, 1.0, 0.0]), {"strict": np.array([0.0, 1.0, 0.0]),
                                                "counting": np.array([np.nan, 1.0, 0.0]),
                                                "position": np.full(3, np.nan)}

        def __call__(self, images, prompts):
            raise AssertionError("a reward with details is scored through details only")

    images = np.zeros((3, 8, 8, 3), np.uint8)
    details: dict[str, float] = {}
    out = score_images(images, ["a", "b", "c"], {"geneval": Counted(), "plain": lambda im, p: np.ones(3)}, details)
    assert calls == [3] and out["geneval"].tolist() == [0.5, 1.0, 0.0] and out["plain"].tolist() == [1.0] * 3
    assert details == {"geneval/strict": pytest.approx(1 / 3), "geneval/counting": 0.5}, "absent family not logged"
    assert score_images(images, ["a", "b", "c"], {"geneval": Counted()})["geneval"].shape == (3,)


def test_a_run_logs_geneval_accuracy_overall_and_per_family(pipe_dir, loaded, tmp_path):  # noqa: F811
    items = [{"prompt": PROMPTS[0], **DOG}, {"prompt": PROMPTS[1], **COUNT}]  # metadata travels with the prompts
    cfg = make_config(pipe_dir, epochs=1, rewards={"geneval": 1.0}, gold=["green"], prompts=items,
                      eval_prompts=items[:1])
    rec = MemoryRecorder(str(tmp_path / "ckpt"))
    train(cfg, rec, MemoryControl(), backbone=fresh_backbone(loaded),
          rewards={"geneval": geneval_with_one_dog({}), "green": green})
    # eval_prompts is PROMPTS[:1] (single object): one dog found -> strict 1, and no counting series
    assert [v for _, v in rec.series("eval/geneval/image_mean")] == [1.0, 1.0]
    assert [v for _, v in rec.series("eval/geneval/overall")] == [1.0, 1.0], "one family: Overall is its accuracy"
    assert [v for _, v in rec.series("eval/geneval/single_object")] == [1.0, 1.0]
    assert rec.series("eval/geneval/partial") and not rec.series("eval/geneval/counting")
    # training scored both prompts: counting wants exactly 2 dogs, one found -> partial 1/2
    assert rec.series("reward/geneval/mean")[0][1] == pytest.approx((1.0 + 0.5) / 2)

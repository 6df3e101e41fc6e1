"""``reward_options`` in RunConfig: validation naming the key, the YAML/JSON round trip, ``--set``
overrides, and the options reaching the reward factories (a real PickScore / CLIPScore on a tiny
random CLIP saved in code), with GG_REWARD_<NAME>_PATH as the fallback."""

import numpy as np
import pytest

from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.rewards import OPTION_TYPES, REGISTRY

REAL = {"backbone": "sd3", "model": "x", "rewards": {"pickscore": 1.0, "ocr": 0.0}, "gold": ["hpsv2"]}


def _errors(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict(data)
    return e.value.by_field()


def test_options_round_trip_through_yaml_json_and_overrides():
    opts = {"pickscore": {"path": "/models/PickScore_v1", "device": "cuda", "batch_size": 16, "scale": 0.04},
            "hpsv2": {"path": "/models/hpsv2", "processor_path": "/models/clip-h", "dtype": "fp16"},
            "ocr": {"min_score": 0.5}}
    cfg = RunConfig.from_dict({**REAL, "reward_options": opts})
    assert cfg.reward_options == opts
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg and RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.reward_factory_options("pickscore")["batch_size"] == 16 and cfg.reward_factory_options("toy") == {}
    over = RunConfig.from_yaml(cfg.to_yaml(), ["reward_options.pickscore.batch_size=4", "reward_options.ocr.min_score=0.1"])
    assert over.reward_options["pickscore"] == {**opts["pickscore"], "batch_size": 4}
    assert over.reward_options["ocr"] == {"min_score": 0.1}
    assert RunConfig.from_dict({}).reward_options == {}


@pytest.mark.parametrize("options,field,words", [
    ({"pickscore": {"pathh": "/x"}}, "reward_options.pickscore.pathh", "did you mean 'path'"),
    ({"pickscore": {"batch_size": 0}}, "reward_options.pickscore.batch_size", "integer >= 1"),
    ({"pickscore": {"dtype": "bf16"}}, "reward_options.pickscore.dtype", "'fp32' or 'fp16'"),
    ({"pickscore": {"path": ""}}, "reward_options.pickscore.path", "non-empty string"),
    ({"hpsv2": {"scale": 2.0}}, "reward_options.hpsv2.scale", "hpsv2 takes path, processor_path"),
    ({"ocr": {"detector": "x"}}, "reward_options.ocr.detector", "ocr takes min_score"),
    ({"clipscore": {"path": "/x"}}, "reward_options.clipscore", "not a reward or gold evaluator of this run"),
])
def test_bad_options_name_the_key(options, field, words):
    errors = _errors({**REAL, "reward_options": options})
    assert field in errors and words in errors[field], errors


def test_a_pinned_cuda_device_is_refused_for_data_parallel_runs():
    """With several ranks 'cuda:0' would stack every rank's scorer on one GPU; 'cuda' is per rank."""
    multi = {**REAL, "num_gpus": 2, "prompts_per_epoch": 2}
    errors = _errors({**multi, "reward_options": {"pickscore": {"device": "cuda:0"}}})
    assert "each rank's own GPU" in errors["reward_options.pickscore.device"], errors
    assert RunConfig.from_dict({**multi, "reward_options": {"pickscore": {"device": "cuda"}}}).num_gpus == 2
    assert RunConfig.from_dict({**REAL, "reward_options": {"pickscore": {"device": "cuda:1"}}}).num_gpus == 1


def test_an_unregistered_reward_takes_no_options():
    errors = _errors({"rewards": {"my_reward": 1.0}, "reward_options": {"my_reward": {"path": "/x"}}})
    assert "unknown reward" in errors["reward_options.my_reward"]


def test_every_declared_option_has_a_known_type():
    for reward, spec in REGISTRY.items():
        for name, kind in spec.options:
            assert kind in OPTION_TYPES, (reward, name, kind)


def test_options_reach_the_factories_and_env_vars_stay_the_fallback(tmp_path, monkeypatch):
    from grpo_guard.rewards.testing import tiny_clip_dir
    from grpo_guard.training.setup import build_rewards

    clip = tiny_clip_dir(tmp_path / "clip")
    monkeypatch.delenv("GG_REWARD_PICKSCORE_PATH", raising=False)
    monkeypatch.delenv("GG_REWARD_CLIPSCORE_PATH", raising=False)
    cfg = RunConfig.from_dict({"backbone": "sd3", "model": "x", "rewards": {"pickscore": 1.0}, "gold": ["clipscore"],
                               "reward_options": {"pickscore": {"path": clip, "device": "cpu", "batch_size": 2,
                                                                "scale": 0.5}}})
    monkeypatch.setenv("GG_REWARD_CLIPSCORE_PATH", clip)  # clipscore: no options, the variable is used
    proxies, golds = build_rewards(cfg, None)
    pick = proxies["pickscore"][0]
    assert pick.scorer.batch_size == 2 and str(pick.scorer.device) == "cpu" and pick.scale == 0.5
    assert golds["clipscore"].scorer.batch_size == 32  # the default
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    scores = pick(images, ["a", "b", "c"])
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_a_gold_evaluator_may_not_be_an_optimised_proxy():
    """Rewards are marked proxy (``rewards:``, with a weight) or gold (``gold:``, never optimised);
    the same name in both is allowed only as a weight-0 proxy (an online gold curve)."""
    errors = _errors({**REAL, "rewards": {"pickscore": 1.0}, "gold": ["pickscore"]})
    assert "must not be optimised" in errors["gold"]
    RunConfig.from_dict({**REAL, "rewards": {"ocr": 1.0, "pickscore": 0.0}, "gold": ["pickscore"]})

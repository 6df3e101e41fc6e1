"""The toy backbone: the shipped base model loads from an empty `model`, runs in float32, and
draws the prompt's colours."""

import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.models import build_backbone
from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.models.toy import ToyBackbone
from grpo_guard.toyworld.checker import correctness

PROMPTS = ["a red circle on a blue background",      # held out: never seen in pretraining
           "a yellow square on a black background",
           "a white triangle on a green background"]


@pytest.fixture(scope="module")
def base():
    return build_backbone(RunConfig(), device="cpu")


def test_shipped_base_model_loads_in_float32(base):
    assert isinstance(base, ToyBackbone) and base.name == "toy"
    for name, comp in base.pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            assert not comp.training, name
            assert all(p.dtype == torch.float32 for p in comp.parameters()), name
    assert base.latent_shape(32) == (4, 16, 16)
    assert base.sigmas(10, 3.0, 32).shape == (11,)


def test_shipped_base_model_draws_the_prompts_colours(base):
    """ODE sampling through the adapter (velocity + sigmas + decode), 20 steps, CFG 4."""
    prompts = [p for p in PROMPTS for _ in range(2)]
    x = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in range(len(prompts))])
    sig = base.sigmas(20, 3.0, 32)
    emb = base.encode_prompts(prompts)
    with torch.no_grad():
        for j in range(20):
            x = x + (sig[j + 1] - sig[j]) * base.velocity(x, sig[j].repeat(len(prompts)), emb, cfg_scale=4.0)
    res = correctness(base.decode(x), prompts)
    assert res["fg_color"].mean() >= 5 / 6 and res["bg_color"].mean() >= 5 / 6, res


def test_missing_model_directory_is_one_clear_sentence(tmp_path):
    with pytest.raises(ModelNotFoundError) as exc:
        build_backbone(RunConfig(model=str(tmp_path / "nowhere")), device="cpu")
    assert str(tmp_path / "nowhere") in str(exc.value) and "toy pretrain" in str(exc.value)


def test_missing_shipped_model_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setattr("grpo_guard.models.toy.BASE_MODEL_DIR", str(tmp_path / "base"))
    with pytest.raises(ModelNotFoundError, match="grpo-guard toy pretrain"):
        ToyBackbone.load(None, device="cpu")

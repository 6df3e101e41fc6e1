"""SD3 adapter on a tiny random pipeline built in code (STACK.md §3): on-policy determinism,
CFG, LoRA, reference model, trainable-state round trip, and clear errors for missing models."""

import numpy as np
import pytest
import torch

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.models.sd3 import SD3Backbone
from grpo_guard.models.testing import tiny_sd3_pipeline, tiny_sd3_pipeline_dir

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_sd3_pipeline_dir(tmp_path_factory.mktemp("sd3"))


@pytest.fixture
def backbone(model_dir):
    return SD3Backbone.load(model_dir, device="cpu")


def _latents(bb, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *bb.latent_shape(32), generator=g)


def test_every_component_is_in_eval_mode_and_only_the_transformer_can_train(backbone):
    """STACK.md F1: train-mode dropout would break the on-policy ratio = 1 invariant."""
    for name, comp in backbone.pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            assert not comp.training, f"{name} left in train mode"
            if name != "transformer":
                assert not any(p.requires_grad for p in comp.parameters()), f"{name} is not frozen"


def test_on_policy_velocity_is_deterministic(backbone, model_dir):
    """Same seed, same inputs -> bit-identical velocity, also after a fresh load (invariant I3)."""
    emb = backbone.encode_prompts(PROMPTS)
    sigma = torch.tensor([0.9, 0.4])
    v1 = backbone.velocity(_latents(backbone, 2), sigma, emb, cfg_scale=4.0)
    v2 = backbone.velocity(_latents(backbone, 2), sigma, emb, cfg_scale=4.0)
    assert torch.equal(v1, v2), "velocity is not deterministic in eval mode"
    other = SD3Backbone.load(model_dir, device="cpu")
    v3 = other.velocity(_latents(other, 2), sigma, other.encode_prompts(PROMPTS), cfg_scale=4.0)
    assert torch.equal(v1, v3), "a reloaded model gives another velocity"


def test_cfg_velocity_combines_uncond_and_cond(backbone):
    x = _latents(backbone, 2)
    sigma = torch.tensor([0.7, 0.7])
    emb = backbone.encode_prompts(PROMPTS)
    v = backbone.velocity(x, sigma, emb, cfg_scale=4.5)
    assert v.shape == x.shape and v.dtype == torch.float32
    v_c = backbone.velocity(x, sigma, emb, cfg_scale=1.0)
    v_u = backbone.velocity(x, sigma, backbone.unconditional(2), cfg_scale=1.0)
    torch.testing.assert_close(v, v_u + 4.5 * (v_c - v_u), atol=1e-5, rtol=1e-4)
    v_det = backbone.velocity(x, sigma, emb, cfg_scale=4.5, detach_uncond=True)
    torch.testing.assert_close(v, v_det, atol=1e-5, rtol=1e-4)
    assert torch.equal(backbone.velocity(x, 0.7, emb, cfg_scale=4.5), v), "a scalar sigma is not broadcast"


def test_euler_over_velocity_and_sigmas_reproduces_the_pipeline(backbone):
    """sigmas(), timestep = 1000·σ, the CFG order and decode() all match StableDiffusion3Pipeline."""
    x0 = _latents(backbone, 1, seed=3)
    kw = dict(num_inference_steps=6, guidance_scale=4.0, height=32, width=32, max_sequence_length=16)
    ref = backbone.pipe(PROMPTS[:1], latents=x0.clone(), output_type="latent", **kw).images
    sig = backbone.sigmas(6, shift=3.0, resolution=32)
    emb = backbone.encode_prompts(PROMPTS[:1])
    x = x0.clone()
    with torch.no_grad():
        for j in range(6):
            x = x + (sig[j + 1] - sig[j]) * backbone.velocity(x, sig[j:j + 1], emb, cfg_scale=4.0)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    pil = backbone.pipe(PROMPTS[:1], latents=x0.clone(), **kw).images[0]
    assert np.array_equal(backbone.decode(x)[0], np.asarray(pil))


def test_sigma_table_is_the_sd35_schedule(backbone):
    """ALGORITHM.md §1.1: T = 10, shift 3 -> 1.000, 0.960, 0.913, 0.858, 0.790, 0.707, ..., 0."""
    s = backbone.sigmas(10, shift=3.0, resolution=32)
    assert s.shape == (11,) and s.dtype == torch.float32
    assert s[0] == 1.0 and s[-1] == 0.0 and bool((s[1:] < s[:-1]).all())
    np.testing.assert_allclose(s[:6].numpy(), [1.0, 0.960, 0.913, 0.858, 0.790, 0.707], atol=6e-4)
    assert not torch.equal(backbone.sigmas(10, 1.0, 32), s), "shift is ignored"


def test_prompt_embeddings_are_cached(backbone):
    a = backbone.encode_prompts(PROMPTS)
    b = backbone.encode_prompts(list(reversed(PROMPTS)))
    assert torch.equal(a["prompt_embeds"][0], b["prompt_embeds"][1])
    assert set(a) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert a["prompt_embeds"].shape[:2] == (2, 32) and a["pooled_prompt_embeds"].shape == (2, 64)
    backbone.unconditional(1)
    assert "" in backbone._cache and PROMPTS[0] in backbone._cache


def test_lora_trains_only_adapter_params(backbone):
    base = {k: v.clone() for k, v in backbone.transformer.state_dict().items()}
    backbone.add_lora(4, 8.0, TARGETS)
    params = backbone.trainable_parameters()
    names = [n for n, p in backbone.transformer.named_parameters() if p.requires_grad]
    assert params and all("lora_" in n for n in names), names[:5]
    before = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if p.requires_grad}
    backbone.train()
    opt = torch.optim.AdamW(params, lr=1e-2)
    emb = backbone.encode_prompts(PROMPTS)
    for _ in range(2):
        loss = backbone.velocity(_latents(backbone, 2), torch.tensor([0.8, 0.3]), emb, cfg_scale=4.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = backbone.transformer.state_dict()
    for k, v in base.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], v), f"frozen parameter {k} changed"
    # The last block is context_pre_only: its context queries (add_q_proj) feed nothing.
    last = len(backbone.transformer.transformer_blocks) - 1
    idle = f"transformer_blocks.{last}.attn.add_q_proj"
    stuck = [n for n, p in backbone.transformer.named_parameters()
             if n in before and idle not in n and torch.equal(p, before[n])]
    assert not stuck, f"LoRA parameters did not move: {stuck[:3]}"


def test_reference_is_the_base_model(backbone):
    x, sig = _latents(backbone, 2), torch.tensor([0.5, 0.5])
    emb = backbone.encode_prompts(PROMPTS)
    v_base = backbone.velocity(x, sig, emb, cfg_scale=4.0)
    backbone.add_lora(4, 8.0, TARGETS)
    assert torch.equal(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base), "LoRA init changed the model"
    with torch.no_grad():
        for n, p in backbone.transformer.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    assert not torch.allclose(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base)
    with backbone.reference():
        assert torch.equal(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base)
    assert not torch.allclose(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base), "adapters not re-enabled"


def test_full_fine_tuning_trains_everything_and_keeps_a_reference(backbone):
    x, sig = _latents(backbone, 1), torch.tensor([0.5])
    emb = backbone.encode_prompts(PROMPTS[:1])
    v_base = backbone.velocity(x, sig, emb, cfg_scale=4.0)
    backbone.add_lora(0, 1.0, TARGETS)
    assert backbone.num_parameters(trainable_only=True) == backbone.num_parameters()
    with torch.no_grad():
        for p in backbone.trainable_parameters():
            p.mul_(1.1)
    with backbone.reference():
        assert torch.equal(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base)
    assert not torch.equal(backbone.velocity(x, sig, emb, cfg_scale=4.0), v_base)


@pytest.mark.parametrize("rank", [4, 0])
def test_trainable_state_round_trip(model_dir, tmp_path, rank):
    from safetensors.torch import load_file, save_file

    a = SD3Backbone.load(model_dir, device="cpu")
    a.add_lora(rank, 8.0, TARGETS)
    with torch.no_grad():
        for p in a.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = str(tmp_path / "state.safetensors")
    save_file(a.trainable_state_dict(), path)
    b = SD3Backbone.load(model_dir, device="cpu")
    b.add_lora(rank, 8.0, TARGETS)
    b.load_trainable_state_dict(load_file(path))
    x, sig, emb = _latents(a, 2), torch.tensor([0.6, 0.2]), PROMPTS
    assert torch.equal(a.velocity(x, sig, a.encode_prompts(emb), cfg_scale=4.0),
                       b.velocity(x, sig, b.encode_prompts(emb), cfg_scale=4.0))
    if rank:
        c = SD3Backbone.load(model_dir, device="cpu")
        c.add_lora(8, 8.0, TARGETS)
        with pytest.raises(ValueError, match="does not fit"):
            c.load_trainable_state_dict(load_file(path))


def test_missing_directory_gives_one_clear_sentence(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelNotFoundError) as exc:
        SD3Backbone.load(str(missing), device="cpu")
    msg = str(exc.value)
    assert str(missing) in msg and "save_pretrained" in msg and "\n" not in msg


def test_incomplete_directory_names_the_missing_part(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for f in (broken / "transformer").iterdir():
        if f.suffix == ".safetensors":
            f.unlink()
    with pytest.raises(ModelNotFoundError, match=r"incomplete: missing transformer/"):
        SD3Backbone.load(str(broken), device="cpu")


def test_uncached_hub_id_offline_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as exc:
        SD3Backbone.load("nobody/not-a-model", device="cpu")
    assert "nobody/not-a-model" in str(exc.value)


def test_fp16_weights_are_upcast_to_float32_on_cpu(tmp_path):
    pipe = tiny_sd3_pipeline().to(torch.float16)
    pipe.save_pretrained(tmp_path / "fp16")
    bb = SD3Backbone.load(str(tmp_path / "fp16"), device="cpu")
    for name, comp in bb.pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            assert all(p.dtype == torch.float32 for p in comp.parameters()), name
    x = _latents(bb, 1)
    assert bb.velocity(x, torch.tensor([0.5]), bb.encode_prompts(PROMPTS[:1]), cfg_scale=4.0).dtype == torch.float32


def test_bf16_autocast_still_returns_float32(model_dir):
    bb = SD3Backbone.load(model_dir, device="cpu", mixed_precision="bf16")
    x = _latents(bb, 2)
    v = bb.velocity(x, torch.tensor([0.5, 0.5]), bb.encode_prompts(PROMPTS), cfg_scale=4.0)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()


@pytest.mark.parametrize("steps, shift", [(10, 3.0), (20, 1.0), (7, 5.0)])
def test_sigma_table_agrees_with_sde_flow_sigmas(backbone, steps, shift):
    """The adapter reads the pipeline's scheduler; sde.flow_sigmas re-derives it — same table."""
    sde = pytest.importorskip("grpo_guard.sde")
    assert torch.equal(backbone.sigmas(steps, shift, 32), sde.flow_sigmas(steps, shift))

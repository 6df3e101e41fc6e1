"""FLUX adapter on a tiny random FluxPipeline built in code (STACK.md §3): packing, the
resolution-shifted sigma table, a rollout that reproduces the pipeline, guidance, LoRA / base /
reference, the adapter round trip, mixed precision and gradient checkpointing."""

import logging
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.models.flux import (
    FLUX_LORA_TARGETS,
    FluxBackbone,
    calculate_shift,
    pack_latents,
    unpack_latents,
)
from grpo_guard.models.testing import tiny_flux_pipeline_dir

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]
SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
RES = 32  # tiny VAE factor 2 -> 16×16 latents -> 8×8 = 64 packed tokens of 4·4 channels


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_flux_pipeline_dir(tmp_path_factory.mktemp("flux"))


@pytest.fixture
def backbone(model_dir):
    return FluxBackbone.load(model_dir, device="cpu")


def _noise(bb, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *bb.latent_shape(RES), generator=g)


def test_packing_round_trips_and_matches_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 16, 16)
    packed = pack_latents(x)
    assert packed.shape == (2, 64, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, 16, 16))
    assert torch.equal(unpack_latents(packed, 16, 16), x)


def test_latent_shape_is_packed_and_full_size_is_1024_by_64(backbone):
    """ALGORITHM.md §1 rule 2: FLUX.1-dev at 512 px is (B, 1024, 64), D = 65,536."""
    assert backbone.latent_shape(RES) == (64, 16)
    assert backbone.unpacked_latent_shape(RES) == (4, 16, 16)
    # FLUX.1-dev: VAE factor 8, in_channels 64 = 4 × 16 latent channels
    dev = SimpleNamespace(vae_scale_factor=8, transformer=SimpleNamespace(config=SimpleNamespace(in_channels=64)))
    dev._latent_side = partial(FluxBackbone._latent_side, dev)
    assert FluxBackbone.latent_shape(dev, 512) == (1024, 64)
    with pytest.raises(ValueError, match="divisible by 16"):
        FluxBackbone.latent_shape(dev, 520)


def test_sigmas_follow_the_resolution_dependent_shift(backbone):
    """The table is FluxPipeline's: linspace(1, 1/T, T) time-shifted by mu(seq_len), then 0."""
    s = backbone.sigmas(8, shift=3.0, resolution=RES)
    grid = torch.linspace(1.0, 1 / 8, 8, dtype=torch.float64)
    mu = calculate_shift(64)
    expect = np.exp(mu) / (np.exp(mu) + (1 / grid - 1))
    assert s.dtype == torch.float32 and s.shape == (9,) and s[-1] == 0
    torch.testing.assert_close(s[:-1].double(), expect, atol=1e-6, rtol=0)
    assert not torch.equal(backbone.sigmas(8, 3.0, 128), s), "the shift must depend on resolution"
    backbone.static_shift = True
    st = backbone.sigmas(8, shift=3.0, resolution=RES)
    torch.testing.assert_close(st[:-1].double(), 3 * grid / (1 + 2 * grid), atol=1e-6, rtol=0)


def test_euler_over_velocity_and_sigmas_reproduces_the_pipeline(backbone):
    """sigmas(), timestep = σ, guidance = cfg_scale, packing and decode() match FluxPipeline."""
    x0 = _noise(backbone, 1, seed=3)
    kw = dict(num_inference_steps=6, guidance_scale=3.5, height=RES, width=RES, max_sequence_length=16)
    ref = backbone.pipe(PROMPTS[:1], latents=x0.clone(), output_type="latent", **kw).images
    sig = backbone.sigmas(6, shift=3.0, resolution=RES)
    torch.testing.assert_close(sig, backbone.pipe.scheduler.sigmas.float(), atol=0, rtol=0)
    emb = backbone.encode_prompts(PROMPTS[:1])
    x = x0.clone()
    with torch.no_grad():
        for j in range(6):
            x = x + (sig[j + 1] - sig[j]) * backbone.velocity(x, sig[j:j + 1], emb, cfg_scale=3.5)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    pil = backbone.pipe(PROMPTS[:1], latents=x0.clone(), **kw).images[0]
    img = backbone.decode(x)
    assert img.dtype == np.uint8 and img.shape == (1, RES, RES, 3)
    assert np.abs(img[0].astype(int) - np.asarray(pil).astype(int)).max() <= 1


def test_guidance_changes_velocity_and_prompt_cache_encodes_once(backbone, monkeypatch):
    x, sigma = _noise(backbone, 2), torch.tensor([0.8, 0.3])
    emb = backbone.encode_prompts(PROMPTS)
    assert emb["prompt_embeds"].shape[:2] == (2, 16) and emb["pooled_prompt_embeds"].shape == (2, 32)
    v1 = backbone.velocity(x, sigma, emb, cfg_scale=1.0)
    v2 = backbone.velocity(x, sigma, emb, cfg_scale=3.5)
    assert v1.dtype == torch.float32 and v1.shape == x.shape and not torch.equal(v1, v2)
    assert torch.equal(backbone.velocity(x, sigma, emb, cfg_scale=3.5, detach_uncond=True), v2)
    calls = []
    monkeypatch.setattr(backbone.pipe, "encode_prompt", lambda *a, **k: calls.append(1))
    again = backbone.encode_prompts(PROMPTS[::-1])
    assert not calls and torch.equal(again["prompt_embeds"][0], emb["prompt_embeds"][1])


def test_lora_trains_only_the_adapter_and_reference_is_the_base(backbone, model_dir):
    """A few SGD steps move every LoRA tensor, leave the base weights unchanged, and
    reference() still gives the base model's velocity (ALGORITHM.md §3.3, invariant I13)."""
    torch.manual_seed(0)  # peft's Gaussian LoRA init draws from the global RNG
    x, sigma = _noise(backbone, 2), torch.tensor([0.9, 0.5])
    emb = backbone.encode_prompts(PROMPTS)
    v_base = backbone.velocity(x, sigma, emb, cfg_scale=3.5)
    base = {n: p.detach().clone() for n, p in backbone.transformer.named_parameters()}
    backbone.add_lora(4, 8.0, SD3_TARGETS)
    assert torch.equal(backbone.velocity(x, sigma, emb, cfg_scale=3.5), v_base), "LoRA init must be a no-op"
    params = backbone.trainable_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    before = {k: v.clone() for k, v in backbone.trainable_state_dict().items()}
    # Adam: lora_B starts at 0, so lora_A's first gradient is 0 and its next ones can be too small
    # for an SGD step to change a float32 value; Adam's step is ~lr whatever the gradient's scale.
    opt = torch.optim.Adam(params, lr=1e-2)
    backbone.train()
    for _ in range(3):
        opt.zero_grad()
        backbone.velocity(x, sigma, emb, cfg_scale=3.5).pow(2).mean().backward()
        opt.step()
    backbone.eval()
    after = backbone.trainable_state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"LoRA tensors that did not move: {unchanged[:5]}"
    for n, p in backbone.transformer.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), f"base weight {n} changed"
    v_tuned = backbone.velocity(x, sigma, emb, cfg_scale=3.5)
    assert not torch.allclose(v_tuned, v_base)
    with backbone.reference():
        assert torch.equal(backbone.velocity(x, sigma, emb, cfg_scale=3.5), v_base)
    assert torch.equal(backbone.velocity(x, sigma, emb, cfg_scale=3.5), v_tuned), "adapter not re-enabled"

    # save/load round trip of the adapter into a fresh model
    import safetensors.torch as st

    path = f"{model_dir}/../adapter.safetensors"
    st.save_file(after, path)
    other = FluxBackbone.load(model_dir, device="cpu")
    other.add_lora(4, 8.0, SD3_TARGETS)
    other.load_trainable_state_dict(st.load_file(path))
    assert torch.equal(other.velocity(x, sigma, other.encode_prompts(PROMPTS), cfg_scale=3.5), v_tuned)


def test_unknown_lora_targets_fall_back_to_flux_defaults(backbone, caplog):
    with caplog.at_level(logging.WARNING, logger="grpo_guard.models.flux"):
        backbone.add_lora(2, 4.0, ["attn2.to_q", "not_a_module"])
    assert "using the flux defaults" in caplog.text
    names = {n.split(".lora_")[0] for n, _ in backbone.transformer.named_parameters() if "lora_" in n}
    assert any(n.endswith("proj_mlp") for n in names) and any(n.endswith("ff.net.2") for n in names)
    assert all(any(n.endswith(t) for t in FLUX_LORA_TARGETS) for n in names)


def test_full_fine_tuning_trains_every_transformer_weight(backbone):
    backbone.add_lora(0, 1.0, SD3_TARGETS)
    n_all = sum(p.numel() for p in backbone.transformer.parameters())
    assert sum(p.numel() for p in backbone.trainable_parameters()) == n_all


def test_from_config_applies_bf16_autocast_and_gradient_checkpointing(model_dir):
    cfg = RunConfig.from_dict(dict(backbone="flux", model=model_dir, resolution=RES, mixed_precision="bf16",
                                   gradient_checkpointing=True, algorithm="dance_grpo_guard"))
    bb = FluxBackbone.from_config(cfg, device="cpu")
    assert bb.transformer.is_gradient_checkpointing and not bb.static_shift
    ref = FluxBackbone.load(model_dir, device="cpu")
    x, sigma = _noise(bb, 2), torch.tensor([0.9, 0.5])
    bb.add_lora(4, 8.0, SD3_TARGETS)
    bb.train()
    v = bb.velocity(x, sigma, bb.encode_prompts(PROMPTS), cfg_scale=3.5)
    assert v.dtype == torch.float32
    v.square().mean().backward()  # through checkpointed blocks
    assert all(p.grad is not None for p in bb.trainable_parameters())
    bb.eval()
    v32 = ref.velocity(x, sigma, ref.encode_prompts(PROMPTS), cfg_scale=3.5)
    torch.testing.assert_close(v.detach(), v32, atol=0.1, rtol=0.1)  # bf16 vs fp32
    static = FluxBackbone.from_config(cfg.with_overrides({"shift": 3.0}), device="cpu")
    assert static.static_shift, "an explicit `shift` selects the static (DanceGRPO) schedule"


def test_an_sd3_directory_is_refused_by_the_flux_backbone(model_dir, tmp_path):
    import json
    import shutil

    sd3 = shutil.copytree(model_dir, tmp_path / "sd3")
    index = json.loads((sd3 / "model_index.json").read_text())
    (sd3 / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ValueError, match="holds a StableDiffusion3Pipeline, not a FluxPipeline"):
        FluxBackbone.load(str(sd3), device="cpu")

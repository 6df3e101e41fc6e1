"""Tiny random pipelines built in code, for tests (STACK.md §3). No hub access, no files needed.

``tiny_sd3_pipeline_dir(tmp_path)`` and ``tiny_flux_pipeline_dir(tmp_path)`` build a pipeline
with random weights and offline tokenizers, ``save_pretrained`` it under ``tmp_path`` and return
the directory, so tests exercise the real loading path (``from_pretrained``). Images are 32×32
(latents 4×16×16); building and saving takes well under a second.
"""

from __future__ import annotations

import os

import torch

from grpo_guard.toyworld.pipeline import clip_text_encoder, eval_all, t5_text_encoder
from grpo_guard.toyworld.tokenizers import make_clip_tokenizer, make_t5_tokenizer

TEXT_LENGTH = 16
RESOLUTION = 32


def tiny_vae(latent_channels: int = 4):
    """``AutoencoderKL`` with block_out (8, 16): VAE factor 2, 32 px -> 16×16 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=RESOLUTION, use_quant_conv=False, use_post_quant_conv=False,
                         mid_block_add_attention=False, shift_factor=0.06, scaling_factor=1.5)


def tiny_sd3_pipeline(seed: int = 0, with_t5: bool = True, shift: float = 3.0):
    """A random ``StableDiffusion3Pipeline`` obeying the dimension rules: pooled 32+32 = 64,
    joint_attention_dim = T5 d_model = 64 ≥ 2 × CLIP hidden 32, caption projection = 2 heads × 16,
    patch 2 over 16×16 latents (pos_embed_max_size 8)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok1 = make_clip_tokenizer(model_max_length=TEXT_LENGTH)
    tok2 = make_clip_tokenizer(model_max_length=TEXT_LENGTH)
    tok3 = make_t5_tokenizer(model_max_length=TEXT_LENGTH) if with_t5 else None
    te1 = clip_text_encoder(len(tok1))
    te2 = clip_text_encoder(len(tok2))
    te3 = t5_text_encoder(len(tok3), d_model=64) if with_t5 else None
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32,
        pooled_projection_dim=64, pos_embed_max_size=8)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=tiny_vae(4),
        text_encoder=te1, tokenizer=tok1, text_encoder_2=te2, tokenizer_2=tok2,
        text_encoder_3=te3, tokenizer_3=tok3)
    return eval_all(pipe)


def tiny_flux_pipeline(seed: int = 0):
    """A random ``FluxPipeline``: in_channels = 4 × 4 latent channels (2×2 packing), rope axes
    (4, 4, 8) summing to the head dim 16, joint_attention_dim = T5 d_model 32, pooled = CLIP 32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok1 = make_clip_tokenizer(model_max_length=TEXT_LENGTH)
    tok2 = make_t5_tokenizer(model_max_length=TEXT_LENGTH)
    te1 = clip_text_encoder(len(tok1), with_projection=False)
    te2 = t5_text_encoder(len(tok2), d_model=32)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
        guidance_embeds=True)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=tiny_vae(4), text_encoder=te1, tokenizer=tok1,
                        text_encoder_2=te2, tokenizer_2=tok2, transformer=transformer)
    return eval_all(pipe)


def _save(pipe, tmp_path, name: str) -> str:
    out = os.path.join(str(tmp_path), name)
    pipe.save_pretrained(out)
    return out


def tiny_sd3_pipeline_dir(tmp_path, seed: int = 0, with_t5: bool = True) -> str:
    """Build :func:`tiny_sd3_pipeline` and save it to ``tmp_path/tiny_sd3``; returns the path."""
    return _save(tiny_sd3_pipeline(seed, with_t5=with_t5), tmp_path, "tiny_sd3")


def tiny_flux_pipeline_dir(tmp_path, seed: int = 0) -> str:
    """Build :func:`tiny_flux_pipeline` and save it to ``tmp_path/tiny_flux``; returns the path."""
    return _save(tiny_flux_pipeline(seed), tmp_path, "tiny_flux")

"""Build the toy world's ``StableDiffusion3Pipeline`` from configs (STACK.md §3–§4).

Text encoders are small, random and frozen (two CLIPs with hidden size 32 and 16 positions, a
T5 with ``d_model`` 96); they only need to give every prompt a distinct, deterministic
embedding. The VAE (block_out (32, 64), latents 4×16×16 at 32 px) and the transformer
(4 layers, 4 heads of 32, 2.28 M parameters) are trained by :mod:`grpo_guard.toyworld.pretrain`.

Dimension rules kept here: ``pooled_projection_dim`` = sum of the CLIP projection dims;
``joint_attention_dim`` = T5 ``d_model`` ≥ 2 × CLIP hidden; ``caption_projection_dim`` = heads ×
head dim; ``pos_embed_max_size`` ≥ latent size / patch size; CLIP positions = tokenizer length.
"""

from __future__ import annotations

import torch

RESOLUTION = 32           # pixels
LATENT_CHANNELS = 4
LATENT_SIZE = 16          # RESOLUTION / 2 (VAE with two blocks)
TEXT_LENGTH = 16          # CLIP positions and T5 max_sequence_length
SCHEDULER_SHIFT = 3.0     # as SD3.5; the run's `shift` knob overrides it at sampling time


def clip_text_encoder(vocab_size: int, *, hidden: int = 32, projection: int = 32,
                      max_positions: int = TEXT_LENGTH, layers: int = 2, with_projection: bool = True):
    """A random CLIP text encoder; bos/eos/pad ids follow ``make_clip_tokenizer`` (0, 1, 1)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, projection_dim=projection,
                         max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, hidden_act="gelu")
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def t5_text_encoder(vocab_size: int, *, d_model: int = 96, layers: int = 2):
    """A random T5 encoder; ``dropout_rate`` 0 so that train mode cannot make it stochastic."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
                   num_layers=layers, num_heads=4, relative_attention_num_buckets=8,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg)


def build_vae(block_out: tuple[int, ...] = (32, 64), latent_channels: int = LATENT_CHANNELS,
              norm_groups: int = 8):
    """``AutoencoderKL`` with 2^(len(block_out)−1) downsampling and no mid-block attention.
    ``shift_factor``/``scaling_factor`` are set after training from the latent statistics."""
    from diffusers import AutoencoderKL

    n = len(block_out)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=block_out,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=norm_groups,
                         sample_size=RESOLUTION, mid_block_add_attention=False,
                         shift_factor=0.0, scaling_factor=1.0)


def build_transformer(num_layers: int = 4):
    from diffusers import SD3Transformer2DModel

    heads, head_dim = 4, 32
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=heads,
        joint_attention_dim=96, caption_projection_dim=heads * head_dim, pooled_projection_dim=64,
        pos_embed_max_size=LATENT_SIZE)


def eval_all(pipe):
    """``.eval()`` on every module of a pipeline (STACK.md F1: constructors leave train mode)."""
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    return pipe


def build_pipeline(*, vae=None, transformer=None, seed: int = 0):
    """The toy ``StableDiffusion3Pipeline`` with fresh random text encoders (seeded) and the
    given (or fresh) VAE and transformer, all in eval mode."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from grpo_guard.toyworld.tokenizers import make_clip_tokenizer, make_t5_tokenizer

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tok1 = make_clip_tokenizer(model_max_length=TEXT_LENGTH)
        tok2 = make_clip_tokenizer(model_max_length=TEXT_LENGTH)
        tok3 = make_t5_tokenizer(model_max_length=TEXT_LENGTH)
        te1 = clip_text_encoder(len(tok1))
        te2 = clip_text_encoder(len(tok2))
        te3 = t5_text_encoder(len(tok3))
        vae = vae if vae is not None else build_vae()
        transformer = transformer if transformer is not None else build_transformer()
    finally:
        torch.random.set_rng_state(gen_state)
    for m in (te1, te2, te3, vae):
        m.requires_grad_(False)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT), vae=vae,
        text_encoder=te1, tokenizer=tok1, text_encoder_2=te2, tokenizer_2=tok2,
        text_encoder_3=te3, tokenizer_3=tok3)
    pipe.set_progress_bar_config(disable=True)
    return eval_all(pipe)

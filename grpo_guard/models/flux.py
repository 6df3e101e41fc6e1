"""FLUX.1 backbone: a diffusers ``FluxPipeline`` behind the ``Backbone`` interface.

It shares the LoRA / full-fine-tuning, trainable-state, reference-model (adapters disabled, no
second copy), prompt-cache, eval/train and VAE-decode code of ``SD3Backbone`` by subclassing it,
and replaces what differs (ALGORITHM.md §1 rules 2–4, STACK.md F6):

- **Latents are packed 2×2.** ``latent_shape(res)`` returns the *packed* per-sample shape
  ``(seq, channels)`` = ``((res/16)², 4·C_vae)``, i.e. ``(1024, 64)`` at 512 px for FLUX.1-dev,
  so the trainer's latents are ``(B, 1024, 64)`` and D = 65,536 as for SD3.5-M. Initial noise
  drawn in this shape is a permutation of the pipeline's unpacked noise (same distribution).
  ``unpacked_latent_shape(res)`` gives ``(C_vae, res/8, res/8)``; :func:`pack_latents` /
  :func:`unpack_latents` convert.
- **Timestep input is σ ∈ [0, 1]** (the pipeline divides its 1000-scaled timesteps by 1000),
  plus ``img_ids`` (seq, 3), ``txt_ids`` (S, 3) and, for guidance-distilled FLUX.1-dev, a
  ``guidance`` tensor equal to ``cfg_scale``. There is no negative/unconditional pass and no
  CFG batch doubling; ``detach_uncond`` therefore has nothing to detach.
- **Sigma schedule.** By default exactly ``FluxPipeline``'s: ``linspace(1, 1/T, T)`` shifted by
  the resolution-dependent ``mu = calculate_shift(seq_len, ...)`` of the scheduler config
  (``use_dynamic_shifting``); the ``shift`` argument is then unused. With ``static_shift=True``
  (``from_config`` sets it when the run config sets ``shift`` explicitly, as DanceGRPO's shift 3
  does) the same linspace is shifted by σ' = shift·σ/(1 + (shift − 1)·σ) instead. Either way
  ``sigmas()`` returns the scheduler's own (T+1,) table, which the rollout stores (rule 4).
- **Conditioning:** ``{"prompt_embeds": (B, S, 4096) T5, "pooled_prompt_embeds": (B, 768) CLIP
  pooled}``, cached per prompt string.
- **Decode:** unpack, ``z / scaling_factor + shift_factor``, VAE decode, uint8.
- **LoRA targets.** The default SD3 names (to_q, to_k, to_v, to_out.0, add_*_proj, to_add_out)
  all exist in FLUX's double-stream blocks (single-stream blocks have to_q/to_k/to_v only).
  Target names that are not FLUX modules are dropped with a log line; if none is left,
  :data:`FLUX_LORA_TARGETS` is used, also logged.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from grpo_guard.models.base import Embeds
from grpo_guard.models.loading import check_pipeline_class, hub_offline, quiet_loading, resolve_pipeline
from grpo_guard.models.sd3 import _DTYPES, SD3Backbone

log = logging.getLogger(__name__)

# Attention projections of both block kinds plus the double-stream feed-forwards and the
# single-stream MLP input (the diffusers FLUX LoRA training script's set, without proj_out,
# whose name also matches the final output layer).
FLUX_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                     "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                     "ff_context.net.2", "proj_mlp")


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FluxPipeline's resolution-dependent ``mu``: linear in the packed sequence length."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as _calc

    return float(_calc(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2·W/2, 4C), FluxPipeline's 2×2 packing."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H/2·W/2, 4C) -> (B, C, H, W); ``height``/``width`` are latent (not pixel) sizes."""
    b, seq, ch = latents.shape
    if seq != (height // 2) * (width // 2):
        raise ValueError(f"packed latents have {seq} tokens; a {height}×{width} latent needs "
                         f"{(height // 2) * (width // 2)}")
    x = latents.view(b, height // 2, width // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, height, width)


def latent_image_ids(h2: int, w2: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h2·w2, 3) position ids of the packed tokens, as FluxPipeline builds them."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


def resolve_lora_targets(module: torch.nn.Module, targets: Iterable[str], defaults: Iterable[str],
                         backbone: str = "flux") -> list[str]:
    """Keep the ``targets`` that name modules of ``module`` (peft's rule: the full name or a
    ``.``-separated suffix). Dropped names are logged; if none is left, ``defaults`` are used."""
    names = [n for n, _ in module.named_modules()]

    def present(t: str) -> bool:
        return any(n == t or n.endswith("." + t) for n in names)

    targets = list(targets)
    kept = [t for t in targets if present(t)]
    missing = [t for t in targets if t not in kept]
    if missing and kept:
        log.warning("LoRA targets %s are not modules of the %s transformer and are skipped; using %s",
                    missing, backbone, kept)
    if not kept:
        kept = [t for t in defaults if present(t)]
        log.warning("none of the LoRA targets %s is a module of the %s transformer; using the %s "
                    "defaults %s instead", targets, backbone, backbone, kept)
        if not kept:
            raise ValueError(f"no LoRA target matches a module of the {backbone} transformer: {targets}")
    return kept


class FluxBackbone(SD3Backbone):
    """``Backbone`` over a ``FluxPipeline`` (see the module docstring for the conventions).

    Args (beyond ``SD3Backbone``'s):
        static_shift (`bool`, default `False`): shift the schedule by the ``shift`` passed to
            :meth:`sigmas` instead of FluxPipeline's resolution-dependent ``mu``.
        max_sequence_length: T5 tokens per prompt; default ``min(512, tokenizer_2.model_max_length)``.
    """

    name = "flux"
    pipeline_class_name = "FluxPipeline"
    model_description = "FLUX pipeline"

    def __init__(self, pipe, *, static_shift: bool = False, max_sequence_length: int | None = None,
                 **kwargs: Any):
        if max_sequence_length is None:
            tok2 = getattr(pipe, "tokenizer_2", None)
            max_sequence_length = min(512, int(getattr(tok2, "model_max_length", 512) or 512))
        super().__init__(pipe, max_sequence_length=max_sequence_length, **kwargs)
        self.static_shift = bool(static_shift)
        self.guidance_embeds = bool(self.transformer.config.get("guidance_embeds", False))
        self._img_ids: dict[int, torch.Tensor] = {}

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, device: str | None = None) -> FluxBackbone:
        static = "shift" in config.fields_set()
        backbone = cls.load(config.model, device=device, mixed_precision=config.mixed_precision,
                            gradient_checkpointing=config.gradient_checkpointing, static_shift=static)
        log.info("flux: sigma schedule %s", f"static shift {config.shift}" if static
                 else "FluxPipeline's resolution-dependent shift (mu); `shift` unused")
        return backbone

    @classmethod
    def load(cls, model: str | None, *, device: str | None = None, mixed_precision: str = "no",
             **kwargs: Any) -> FluxBackbone:
        """Resolve ``model`` (files checked before anything is allocated), then load it. On CUDA
        with mixed precision the weights are loaded in that dtype (trainable ones are float32)."""
        if mixed_precision not in _DTYPES:
            raise ValueError(f"mixed_precision must be one of {', '.join(_DTYPES)}, got {mixed_precision!r}")
        path = resolve_pipeline(model, what=cls.model_description, fix=cls.missing_model_fix)
        check_pipeline_class(path, cls.pipeline_class_name)
        from diffusers import FluxPipeline

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _DTYPES[mixed_precision] if dev.type == "cuda" else torch.float32
        with quiet_loading():
            pipe = FluxPipeline.from_pretrained(path, dtype=dtype,
                                                local_files_only=hub_offline() or os.path.isdir(path))
        if dtype != torch.float32:
            pipe.vae.to(torch.float32)  # decode in float32, as the pipeline's quality path
        return cls(pipe, device=dev, mixed_precision=mixed_precision, **kwargs)

    # ---- geometry and schedule --------------------------------------------------------------
    def _latent_side(self, resolution: int) -> int:
        mult = self.vae_scale_factor * 2
        if resolution % mult:
            raise ValueError(f"resolution {resolution} is not divisible by {mult} "
                             f"(VAE factor {self.vae_scale_factor} × 2 for FLUX's 2×2 packing)")
        return resolution // self.vae_scale_factor

    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Packed per-sample shape ``(seq, channels)``: (1024, 64) at 512 px for FLUX.1-dev."""
        side = self._latent_side(resolution)
        return ((side // 2) ** 2, int(self.transformer.config.in_channels))

    def unpacked_latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """``(C_vae, H/8, W/8)``: the VAE latent before packing."""
        side = self._latent_side(resolution)
        return (int(self.transformer.config.in_channels) // 4, side, side)

    def sigmas(self, num_steps: int, shift: float, resolution: int) -> torch.Tensor:
        """(T+1,) float32, the exact table FluxPipeline's scheduler steps through (module doc)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        base = self.pipe.scheduler.config
        seq = self.latent_shape(resolution)[0]
        grid = np.linspace(1.0, 1.0 / num_steps, num_steps)
        if self.static_shift or not base.get("use_dynamic_shifting", False):
            sched = FlowMatchEulerDiscreteScheduler.from_config(base, use_dynamic_shifting=False,
                                                                shift=float(shift))
            sched.set_timesteps(num_steps, device="cpu", sigmas=grid)
        else:
            sched = FlowMatchEulerDiscreteScheduler.from_config(base)
            mu = calculate_shift(seq, base.get("base_image_seq_len", 256), base.get("max_image_seq_len", 4096),
                                 base.get("base_shift", 0.5), base.get("max_shift", 1.15))
            sched.set_timesteps(num_steps, device="cpu", sigmas=grid, mu=mu)
        return sched.sigmas.detach().to(torch.float32).cpu().clone()

    # ---- conditioning -----------------------------------------------------------------------
    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str], chunk: int = 64) -> None:
        """Fill the (inherited) per-prompt cache with (T5 embeds, CLIP pooled) pairs."""
        for i in range(0, len(prompts), chunk):
            part = prompts[i:i + chunk]
            pe, pooled, _ = self.pipe.encode_prompt(prompt=part, prompt_2=None, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
            for j, p in enumerate(part):
                self._cache[p] = (pe[j:j + 1].clone(), pooled[j:j + 1].clone())
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)

    def unconditional(self, batch_size: int) -> Embeds:
        raise RuntimeError("FLUX.1 is guidance-distilled: it has no unconditional pass")

    # ---- the model --------------------------------------------------------------------------
    def _image_ids(self, seq: int) -> torch.Tensor:
        if seq not in self._img_ids:
            side = math.isqrt(seq)
            if side * side != seq:
                raise ValueError(f"packed latents with {seq} tokens are not square; FluxBackbone "
                                 "handles square resolutions only")
            self._img_ids[seq] = latent_image_ids(side, side, device=self.device)
        return self._img_ids[seq]

    def cfg_branches(self, cfg_scale: float, detach_uncond: bool = False) -> int:
        return 1  # distilled guidance: one pass, no [uncond; cond] batch

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: Embeds, *,
                 cfg_scale: float, detach_uncond: bool = False) -> torch.Tensor:
        """Velocity for packed ``latents`` (B, seq, C), float32, same shape.

        ``sigma`` (B,) or scalar, in [0, 1], is the transformer's timestep input as is;
        ``cfg_scale`` is the distilled guidance (FLUX.1-dev, a (B,) tensor); models without a
        guidance embedding ignore it. One conditional pass; ``detach_uncond`` is a no-op."""
        b, seq, _ = latents.shape
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        pe, pooled = embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
        guidance = (torch.full((b,), float(cfg_scale), device=latents.device, dtype=torch.float32)
                    if self.guidance_embeds else None)
        img_ids = self._image_ids(seq)
        txt_ids = torch.zeros(pe.shape[1], 3, device=latents.device, dtype=img_ids.dtype)
        x = latents
        if self.mixed_precision == "no":
            dtype = self.transformer.dtype
            x, pe, pooled = x.to(dtype), pe.to(dtype), pooled.to(dtype)
            sigma = sigma.to(dtype)
            guidance = guidance.to(dtype) if guidance is not None else None
        with self._autocast():
            out = self.transformer(hidden_states=x, timestep=sigma, guidance=guidance,
                                   pooled_projections=pooled, encoder_hidden_states=pe,
                                   txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """uint8 (B, H, W, 3) from packed latents (B, seq, C): unpack, then the VAE decode with
        shift/scale (inherited)."""
        side = 2 * math.isqrt(latents.shape[1])
        return super().decode(unpack_latents(latents, side, side), batch_size=batch_size)

    def add_lora(self, rank: int, alpha: float, targets: list[str]) -> None:
        if rank > 0:
            targets = resolve_lora_targets(self.transformer, targets, FLUX_LORA_TARGETS)
        super().add_lora(rank, alpha, targets)

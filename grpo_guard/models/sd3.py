"""SD3 / SD3.5 backbone: a diffusers ``StableDiffusion3Pipeline`` behind the ``Backbone`` interface.

What the trainer gets (ALGORITHM.md §1 conventions):
- ``sigmas(T, shift, resolution)``: the (T+1,) table the pipeline's ``FlowMatchEulerDiscreteScheduler``
  would use with that shift (1 → 0, last entry exactly 0).
- ``encode_prompts(prompts)``: ``{"prompt_embeds": (B, S, D), "pooled_prompt_embeds": (B, P)}``,
  cached per prompt string; the unconditional ("") embedding is cached as well.
- ``velocity(x, σ, embeds, cfg_scale=w)``: one batched transformer pass over [uncond; cond] with
  timestep 1000·σ, returning ``v_u + w·(v_c − v_u)`` in float32 (the pipeline's CFG order).
- ``decode(latents)``: uint8 (B, H, W, 3), bit-identical to the pipeline's ``output_type="np"``
  path followed by the PIL conversion.
- LoRA through peft (``transformer.add_adapter``); rank 0 is full fine-tuning.

Every pipeline component is put in eval mode on load (STACK.md F1); the VAE and text encoders are
frozen. With ``mixed_precision`` bf16/fp16 the transformer forward runs under autocast.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from grpo_guard.models.base import Backbone, Embeds, check_state_fits
from grpo_guard.models.loading import (  # noqa: F401  (re-exported: older code imports them from sd3)
    check_pipeline_class,
    check_pipeline_dir,
    hub_offline,
    quiet_loading,
    resolve_pipeline,
)

# A full-fine-tuned transformer keeps a frozen copy for the KL reference when it is this small
# (the toy model: 2.3 M); larger models have no free reference and ``reference()`` raises.
REFERENCE_COPY_MAX_PARAMS = 100_000_000

_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- locating a model: grpo_guard.models.loading (these names stay importable from here) ----

_DEFAULT_FIX = "set `model` to a directory written by save_pretrained or to a hub id such as 'org/name'"
_check_pipeline_class = check_pipeline_class
_quiet_loading = quiet_loading


# ---- the backbone ---------------------------------------------------------------------------

class SD3Backbone(Backbone):
    """``Backbone`` over a ``StableDiffusion3Pipeline``.

    Args:
        pipe: the loaded pipeline (any device; it is moved to ``device``).
        device: torch device; default CUDA when available, else CPU.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` — autocast dtype for the transformer.
        max_sequence_length: T5 tokens per prompt; default ``min(256, tokenizer_3.model_max_length)``.
        gradient_checkpointing: recompute transformer activations in the backward pass.
        max_cached_prompts: LRU size of the prompt-embedding cache.
    """

    name = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    model_description = "SD3 pipeline"
    missing_model_fix = _DEFAULT_FIX

    def __init__(self, pipe, *, device: str | torch.device | None = None, mixed_precision: str = "no",
                 max_sequence_length: int | None = None, gradient_checkpointing: bool = False,
                 max_cached_prompts: int = 4096):
        if mixed_precision not in _DTYPES:
            raise ValueError(f"mixed_precision must be one of {', '.join(_DTYPES)}, got {mixed_precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.mixed_precision = mixed_precision
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        for comp_name, comp in pipe.components.items():
            if isinstance(comp, torch.nn.Module):
                comp.eval()  # STACK.md F1
                if comp_name != "transformer":
                    comp.requires_grad_(False)
        self.transformer.requires_grad_(False)  # nothing trains until add_lora()
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        tok3 = getattr(pipe, "tokenizer_3", None)
        if max_sequence_length is None:
            max_sequence_length = min(256, int(getattr(tok3, "model_max_length", 256) or 256))
        self.max_sequence_length = int(max_sequence_length)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.patch_size = int(self.transformer.config.patch_size)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._max_cached = max(2, int(max_cached_prompts))
        self.lora_rank: int | None = None  # None: add_lora not called; 0: full fine-tuning
        self._reference_transformer: torch.nn.Module | None = None

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config, device: str | None = None) -> SD3Backbone:
        return cls.load(config.model, device=device, mixed_precision=config.mixed_precision,
                        gradient_checkpointing=config.gradient_checkpointing)

    @classmethod
    def load(cls, model: str | None, *, device: str | None = None, mixed_precision: str = "no",
             **kwargs: Any) -> SD3Backbone:
        """Load from a local directory or hub id. Weights saved in fp16 are upcast to float32
        unless a CUDA device and ``mixed_precision`` ask for the low-precision dtype."""
        path = resolve_pipeline(model, what=cls.model_description, fix=cls.missing_model_fix)
        check_pipeline_class(path, cls.pipeline_class_name)
        import diffusers

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _DTYPES[mixed_precision] if dev.type == "cuda" else torch.float32
        pipeline_class = getattr(diffusers, cls.pipeline_class_name)
        with quiet_loading():
            pipe = pipeline_class.from_pretrained(path, dtype=dtype,
                                                  local_files_only=hub_offline() or os.path.isdir(path))
        return cls(pipe, device=dev, mixed_precision=mixed_precision, **kwargs)

    # ---- geometry and schedule --------------------------------------------------------------
    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        mult = self.vae_scale_factor * self.patch_size
        if resolution % mult:
            raise ValueError(f"resolution {resolution} is not divisible by {mult} (VAE factor × patch size)")
        side = resolution // self.vae_scale_factor
        return (int(self.transformer.config.in_channels), side, side)

    def sigmas(self, num_steps: int, shift: float, resolution: int) -> torch.Tensor:
        """(T+1,) float32: exactly what the pipeline's scheduler uses with ``shift``."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config, shift=float(shift))
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            seq = (resolution // self.vae_scale_factor // self.patch_size) ** 2
            c = sched.config
            kwargs["mu"] = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                           c.get("base_shift", 0.5), c.get("max_shift", 1.16))
        sched.set_timesteps(num_steps, device="cpu", **kwargs)
        return sched.sigmas.detach().to(torch.float32).cpu().clone()

    # ---- conditioning -----------------------------------------------------------------------
    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str], chunk: int = 64) -> None:
        for i in range(0, len(prompts), chunk):
            part = prompts[i:i + chunk]
            pe, _, pooled, _ = self.pipe.encode_prompt(
                prompt=part, prompt_2=None, prompt_3=None, device=self.device,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
            for j, p in enumerate(part):
                self._cache[p] = (pe[j:j + 1].clone(), pooled[j:j + 1].clone())
        while len(self._cache) > self._max_cached:
            oldest = next(iter(self._cache))
            if oldest == "":
                self._cache.move_to_end("")
                oldest = next(iter(self._cache))
            self._cache.pop(oldest)

    def encode_prompts(self, prompts: list[str]) -> Embeds:
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            self._encode_uncached(missing)
        for p in dict.fromkeys(prompts):
            self._cache.move_to_end(p)
        return {
            "prompt_embeds": torch.cat([self._cache[p][0] for p in prompts]),
            "pooled_prompt_embeds": torch.cat([self._cache[p][1] for p in prompts]),
        }

    def unconditional(self, batch_size: int) -> Embeds:
        """The "" embedding repeated ``batch_size`` times (cached)."""
        e = self.encode_prompts([""])
        return {k: v.expand(batch_size, *v.shape[1:]) for k, v in e.items()}

    # ---- the model --------------------------------------------------------------------------
    def _autocast(self):
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.mixed_precision])

    def _forward(self, x: torch.Tensor, t: torch.Tensor, pe: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if self.mixed_precision == "no":
            dtype = self.transformer.dtype
            x, pe, pooled = x.to(dtype), pe.to(dtype), pooled.to(dtype)
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=pe,
                                pooled_projections=pooled, return_dict=False)[0]

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: Embeds, *,
                 cfg_scale: float, detach_uncond: bool = False) -> torch.Tensor:
        """Guided velocity ``v_u + w·(v_c − v_u)``, float32, shaped like ``latents``.

        ``sigma`` is (B,) (a scalar is broadcast); the transformer sees timestep 1000·σ.
        ``cfg_scale`` 1 runs the conditional branch only. With ``detach_uncond`` the
        unconditional branch runs separately under ``no_grad`` (values equal up to float
        rounding; gradients flow through the conditional branch only)."""
        b = latents.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        t = sigma * 1000.0
        pe, pooled = embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
        with self._autocast():
            if cfg_scale == 1.0:
                return self._forward(latents, t, pe, pooled).float()
            unc = self.unconditional(b)
            if detach_uncond:
                with torch.no_grad():
                    v_u = self._forward(latents, t, unc["prompt_embeds"], unc["pooled_prompt_embeds"]).float()
                v_c = self._forward(latents, t, pe, pooled).float()
            else:
                out = self._forward(torch.cat([latents, latents]), torch.cat([t, t]),
                                    torch.cat([unc["prompt_embeds"].to(pe.dtype), pe]),
                                    torch.cat([unc["pooled_prompt_embeds"].to(pooled.dtype), pooled])).float()
                v_u, v_c = out.chunk(2)
        return v_u + cfg_scale * (v_c - v_u)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """uint8 (B, H, W, 3), as the pipeline's PIL output."""
        cfg = self.vae.config
        out = []
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i:i + batch_size].to(self.device, torch.float32) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
            img = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()
            img = (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            out.append((img * 255).round().astype(np.uint8))
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)

    # ---- training state ---------------------------------------------------------------------
    def add_lora(self, rank: int, alpha: float, targets: list[str]) -> None:
        """Attach a LoRA adapter (A Gaussian, B zero: the model is unchanged at init), or with
        ``rank`` 0 make every transformer parameter trainable (full fine-tuning)."""
        if self.lora_rank is not None:
            raise RuntimeError("add_lora was already called on this backbone")
        if rank < 0:
            raise ValueError(f"LoRA rank must be >= 0, got {rank}")
        if rank == 0:
            n = sum(p.numel() for p in self.transformer.parameters())
            if n <= REFERENCE_COPY_MAX_PARAMS:
                ref = copy.deepcopy(self.transformer).eval()
                self._reference_transformer = ref.requires_grad_(False)
            self.transformer.to(torch.float32).requires_grad_(True)
        else:
            from peft import LoraConfig

            self.transformer.requires_grad_(False)
            try:
                self.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                                        init_lora_weights="gaussian"))
            except ValueError as e:
                raise ValueError(f"LoRA targets {list(targets)} match no module of the transformer ({e})") from None
            for p in self.transformer.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # adapter weights train in float32
        self.lora_rank = rank

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies: the LoRA weights with LoRA, else the full transformer state."""
        if self.lora_rank:
            from peft.utils import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.transformer)
        else:
            state = self.transformer.state_dict()
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what ``trainable_state_dict`` returned; a mismatch raises ``ValueError``."""
        mine = self.trainable_state_dict()
        check_state_fits({k: tuple(v.shape) for k, v in mine.items()}, state, self.lora_rank)
        if self.lora_rank:
            from peft.utils import set_peft_model_state_dict

            set_peft_model_state_dict(self.transformer, {k: v.to(self.device) for k, v in state.items()})
        else:
            self.transformer.load_state_dict(state, strict=True)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The frozen base model inside the block: adapters disabled (LoRA), or the frozen copy
        kept at ``add_lora(0, ...)`` for small fully fine-tuned models."""
        if self.lora_rank is None:
            yield
        elif self.lora_rank > 0:
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()
        elif self._reference_transformer is not None:
            trained, self.transformer = self.transformer, self._reference_transformer
            try:
                yield
            finally:
                self.transformer = trained
        else:
            raise RuntimeError(
                f"{type(self).__name__}: full fine-tuning of a model this large keeps no reference copy; "
                "set kl_beta: 0 or use LoRA (lora_rank > 0)")

    def eval(self) -> None:
        for comp in self.pipe.components.values():
            if isinstance(comp, torch.nn.Module):
                comp.eval()
        self.transformer.eval()

    def train(self) -> None:
        self.transformer.train()

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = self.trainable_parameters() if trainable_only else list(self.transformer.parameters())
        return sum(p.numel() for p in params)

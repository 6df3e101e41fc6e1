"""The backbone interface the trainer sees. A backbone wraps a flow-matching pipeline
(transformer + VAE + text encoders) and exposes only what GRPO needs.

Conventions (ALGORITHM.md §1): σ ∈ [0, 1], σ = 1 is pure noise; x_σ = (1 − σ)·x₀ + σ·x₁;
the transformer predicts the velocity x₁ − x₀. Latents are float32 in the trainer; adapters may
autocast inside ``velocity`` but always return float32.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator

import numpy as np
import torch

Embeds = dict[str, torch.Tensor]  # every tensor has the batch dim first; index with select_embeds


def select_embeds(embeds: Embeds, index: torch.Tensor | list[int] | slice) -> Embeds:
    return {k: v[index] for k, v in embeds.items()}


def cat_embeds(parts: list[Embeds]) -> Embeds:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def check_state_fits(shapes: dict[str, tuple[int, ...]], saved: dict[str, torch.Tensor], lora_rank: int) -> None:
    """Raise ValueError, in one sentence with an example key of each kind, when a saved trainable
    state (``saved``) does not have exactly the keys and shapes of the model's (``shapes``)."""
    missing, extra = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
    bad = sorted(k for k in set(shapes) & set(saved) if tuple(shapes[k]) != tuple(saved[k].shape))
    if missing or extra or bad:
        kind = f"LoRA rank {lora_rank}" if lora_rank else "full transformer"
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(bad)} with other shapes (e.g. {bad[0]})" if bad else ""]
        raise ValueError(f"the saved trainable state does not fit this {kind} model: "
                         f"{', '.join(p for p in parts if p)} keys")


class Backbone(abc.ABC):
    """One trainable flow-matching text-to-image model."""

    name: str = "base"
    device: torch.device
    transformer: torch.nn.Module  # the module that gets LoRA / is fully fine-tuned

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, device: str | None = None) -> Backbone:
        """Load from ``config.model`` (local dir or hub id); a missing model raises
        ``ModelNotFoundError`` with one sentence saying where it looked and how to fix it."""

    @abc.abstractmethod
    def latent_shape(self, resolution: int) -> tuple[int, ...]:
        """Per-sample latent shape (without the batch dim) at a pixel resolution."""

    @abc.abstractmethod
    def sigmas(self, num_steps: int, shift: float, resolution: int) -> torch.Tensor:
        """(T+1,) float32 sigma table from 1 down to 0 (the pipeline's scheduler table)."""

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Embeds:
        """Conditioning for each prompt (cached per prompt string)."""

    @abc.abstractmethod
    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: Embeds, *,
                 cfg_scale: float, detach_uncond: bool = False) -> torch.Tensor:
        """Guided velocity, float32, shaped like ``latents``. ``sigma`` is (B,)."""

    def cfg_branches(self, cfg_scale: float, detach_uncond: bool = False) -> int:
        """Transformer rows per latent row in a ``velocity`` call with gradients: 2 when classifier-free
        guidance batches [uncond; cond] together, else 1 (``update_rows_per_forward`` counts these rows)."""
        return 2 if cfg_scale != 1.0 and not detach_uncond else 1

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 images (B, H, W, 3)."""

    @abc.abstractmethod
    def add_lora(self, rank: int, alpha: float, targets: list[str]) -> None:
        """Attach a LoRA adapter (peft) to the transformer; rank 0 = full fine-tuning."""

    @abc.abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    @abc.abstractmethod
    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    @abc.abstractmethod
    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context the backbone is the frozen base model (LoRA disabled), for the
        KL term. Full fine-tuning has no free reference; adapters raise if asked."""
        raise RuntimeError(f"{type(self).__name__} has no reference model; set kl_beta: 0 or use LoRA")
        yield  # pragma: no cover

    def eval(self) -> None:
        self.transformer.eval()

    def train(self) -> None:
        self.transformer.train()


class ModelNotFoundError(FileNotFoundError):
    """A model path or hub id could not be resolved offline."""

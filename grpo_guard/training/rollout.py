"""Rollouts: SDE sampling of prompt groups for training, ODE sampling for evaluation.

A rollout keeps, for every trained denoising step j of every trajectory, what the update needs to
recompute step j exactly (ALGORITHM.md §2.5): the input latent x_j, the sampled next latent x', the
rollout's mean μ_old and log-prob, and σ_j, σ_{j+1} as used (§1 rule 4, never looked up again).
Tensors are laid out (N, S, ...) — trajectory-major, trained-step-minor — so a micro-batch of
trajectories is one contiguous ``index_select`` and all its trained steps batch into one forward.

Every random stream is derived from (seed, epoch, purpose) by :func:`derive_generator`, so a resumed
run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from grpo_guard.models.base import Backbone, Embeds, select_embeds
from grpo_guard.sde import sde_step
from grpo_guard.training.interrupt import check

# Purposes of the derived random streams: the third component of (seed, epoch, purpose, ...).
PROMPTS, INIT_NOISE, STEP_NOISE, TIMESTEPS, SHUFFLE = range(5)


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from (seed, *keys) (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *keys)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def encode_each(backbone: Backbone, prompts: list[str]) -> Embeds:
    """Conditioning for ``prompts``, each distinct prompt encoded on its own first, so its embedding
    does not depend on which prompts shared its batch (float rounding of batched matmuls): a resumed
    run then conditions on bit-identical embeddings."""
    for p in dict.fromkeys(prompts):
        backbone.encode_prompts([p])
    return backbone.encode_prompts(prompts)


@dataclass
class Rollout:
    """One epoch of trajectories: N = K prompts × G samples, S trained steps per trajectory."""

    prompts: list[str]          # the K prompts of the epoch
    prompt_index: torch.Tensor  # (N,) long, index into ``prompts`` (also the group id)
    embeds: Embeds              # conditioning of the K prompts, batch dim K (encoded once)
    x: torch.Tensor             # (N, S, *L) latent entering trained step j
    x_next: torch.Tensor        # (N, S, *L) sampled latent x' leaving step j
    mean: torch.Tensor          # (N, S, *L) rollout mean μ_old of step j
    log_prob: torch.Tensor      # (N, S) rollout log p_old(x' | x), per-dim mean
    sigma: torch.Tensor         # (N, S) σ_j
    sigma_next: torch.Tensor    # (N, S) σ_{j+1}
    step_index: torch.Tensor    # (N, S) long, j
    final: torch.Tensor         # (N, *L) x at σ = 0

    @property
    def num_samples(self) -> int:
        return int(self.prompt_index.shape[0])


def trained_steps(mode: str, num_steps: int, num_trained: int, n: int, *, window_start: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, S) long: the denoising steps trained for each trajectory, ascending (ALGORITHM.md §3.4).

    ``first``: steps 0 … S−1 (Flow-GRPO). ``random``: a random S-subset per trajectory (DanceGRPO).
    ``window``: the S steps from ``window_start`` (the SDE window; the other steps are ODE)."""
    if mode == "random":
        perm = torch.stack([torch.randperm(num_steps, generator=generator) for _ in range(n)])
        return perm[:, :num_trained].sort(dim=1).values
    start = window_start if mode == "window" else 0
    return torch.arange(start, start + num_trained).expand(n, num_trained).clone()


@torch.no_grad()
def sample_rollouts(backbone: Backbone, prompts: list[str], prompt_index: torch.Tensor, sigmas: torch.Tensor,
                    steps: torch.Tensor, noise: torch.Tensor, *, seed_keys: tuple[int, ...], cfg_scale: float,
                    noise_level: float, dynamics: str, sde_steps: tuple[int, int] | None = None,
                    cps_logprob: str = "flow_grpo", chunk: int = 64, row_ids: torch.Tensor | None = None,
                    should_stop: Callable[[], bool] | None = None) -> Rollout:
    """Sample N trajectories with the SDE sampler and record their trained steps.

    Args:
        backbone: the policy (put in eval mode here).
        prompts: the K distinct prompts; ``prompt_index`` (N,) says which one each trajectory uses.
        sigmas: (T+1,) float32 table, σ_0 = 1 … σ_T = 0.
        steps: (N, S) trained steps per trajectory (:func:`trained_steps`).
        noise: (N, *L) initial latents x at σ_0.
        seed_keys: keys from which sample i's step noise generator is derived (``(*seed_keys, i)``), so a
            trajectory's noise depends only on the run seed, the epoch and its index — not on ``chunk``.
        sde_steps: [lo, hi) of stochastic steps (an SDE window); others are Euler ODE steps. None: all.
        chunk: trajectories per forward pass.
        row_ids: (N,) each trajectory's index in the whole epoch, for its noise generator (a
            data-parallel rank samples rows 12…23 of the epoch with the noise those rows get in a
            single process). None: 0 … N−1.
    """
    backbone.eval()
    device = backbone.device
    embeds = encode_each(backbone, prompts)
    n, s_count = steps.shape
    num_steps = sigmas.shape[0] - 1
    latent = tuple(noise.shape[1:])
    # slot[i, j] = position of step j among trajectory i's trained steps, or -1.
    slot = torch.full((n, num_steps), -1, dtype=torch.long)
    slot.scatter_(1, steps, torch.arange(s_count).expand(n, s_count).contiguous())
    x_keep = torch.empty((n, s_count, *latent), device=device)
    x_next_keep = torch.empty_like(x_keep)
    mean_keep = torch.empty_like(x_keep)
    logp_keep = torch.empty((n, s_count), device=device)
    final = torch.empty((n, *latent), device=device)
    lo, hi = sde_steps if sde_steps is not None else (0, num_steps)
    for a in range(0, n, chunk):
        rows = torch.arange(a, min(a + chunk, n))
        b = rows.shape[0]
        ids = rows if row_ids is None else row_ids[rows]
        gens = [derive_generator(*seed_keys, int(i)) for i in ids]
        cond = select_embeds(embeds, prompt_index[rows].to(device))
        x = noise[rows].to(device)
        for j in range(num_steps):
            check(should_stop, "while sampling")  # a shutdown: the epoch is dropped, nothing changed yet
            sig = sigmas[j].expand(b).to(device)
            sig_next = sigmas[j + 1].expand(b).to(device)
            v = backbone.velocity(x, sig, cond, cfg_scale=cfg_scale)
            stochastic = lo <= j < hi
            st = sde_step(v, x, sig, sig_next, noise_level=noise_level if stochastic else 0.0,
                          dynamics=dynamics if stochastic else "ode", generator=gens,
                          cps_logprob=cps_logprob, validate=j == 0)
            sl = slot[rows, j]
            hit = (sl >= 0).nonzero().squeeze(1)
            if hit.numel():
                dst, pos = rows[hit].to(device), sl[hit].to(device)
                x_keep[dst, pos] = x[hit]
                x_next_keep[dst, pos] = st.prev_sample[hit]
                mean_keep[dst, pos] = st.mean[hit]
                logp_keep[dst, pos] = st.log_prob[hit]
            x = st.prev_sample
        final[rows.to(device)] = x
    sigma_table = sigmas.to(device)
    steps_d = steps.to(device)
    return Rollout(prompts=list(prompts), prompt_index=prompt_index.to(device), embeds=embeds,
                   x=x_keep, x_next=x_next_keep, mean=mean_keep, log_prob=logp_keep,
                   sigma=sigma_table[steps_d], sigma_next=sigma_table[steps_d + 1], step_index=steps_d,
                   final=final)


def seed_noise(seeds: list[int], latent_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *L) initial latents, row b drawn from a generator seeded with ``seeds[b]`` alone (so
    ``grpo-guard sample --seed S`` reproduces the eval image of seed S)."""
    return torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_ode(backbone: Backbone, prompts: list[str], noise: torch.Tensor, sigmas: torch.Tensor, *,
               cfg_scale: float, chunk: int = 64, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """Deterministic Euler (ODE) sampling, x ← x + v·dt (ALGORITHM.md §2.4): (B, *L) final latents."""
    backbone.eval()
    device = backbone.device
    out = []
    for a in range(0, len(prompts), chunk):
        cond = encode_each(backbone, prompts[a:a + chunk])
        x = noise[a:a + chunk].to(device)
        b = x.shape[0]
        for j in range(sigmas.shape[0] - 1):
            check(should_stop, "while evaluating")
            v = backbone.velocity(x, sigmas[j].expand(b).to(device), cond, cfg_scale=cfg_scale)
            x = x + (sigmas[j + 1] - sigmas[j]).to(device) * v
        out.append(x)
    return torch.cat(out)

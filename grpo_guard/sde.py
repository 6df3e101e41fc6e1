"""SDE / ODE denoising steps with log-probabilities for flow-matching models.

Pure functions, no hidden state: any step can be recomputed in any order from the stored
``(latents, sigma, sigma_next, prev_sample)``. Formulas: ``reference/ALGORITHM.md`` §1–§2.

Conventions (ALGORITHM.md §1): ``t = σ ∈ [0, 1]``, ``σ = 1`` is pure noise, the model predicts the
velocity ``v ≈ x₁ − x₀``, and one step maps ``x`` at ``σ_j`` to ``x'`` at ``σ_{j+1} < σ_j``, so the
signed ``dt = σ_{j+1} − σ_j`` is negative. Every step is Gaussian,

    x' = μ + s·ξ,    μ = a·x + β·v·dt,    ξ ~ N(0, I),

with per-sample coefficients ``a``, ``β`` and per-element std ``s``. All step math runs in float32
(float64 when the inputs are float64), whatever the model's dtype (§1 rule 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from grpo_guard.checks import Check, _describe, _is_real, _per_sample, _raise_failed  # noqa: F401

__all__ = [
    "CPS_LOGPROBS",
    "DYNAMICS",
    "SDEStep",
    "StepConstants",
    "flow_sigmas",
    "sde_step",
    "step_constants",
    "step_log_prob",
]

Dynamics = Literal["flow_grpo", "dance_grpo", "cps", "ode"]
DYNAMICS: tuple[str, ...] = ("flow_grpo", "dance_grpo", "cps", "ode")
CPS_LOGPROBS: tuple[str, ...] = ("flow_grpo", "gaussian")
LOG_PROB_FORMS: tuple[str, ...] = ("gaussian", "neg_mse")

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

SigmaLike = float | torch.Tensor
GeneratorLike = torch.Generator | Sequence[torch.Generator] | None


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class StepConstants:
    """Per-sample constants of one denoising step (ALGORITHM.md §1.1, §2). Every field is ``(B,)``.

    Attributes:
        std_dev_t (`torch.Tensor` of shape `(B,)`):
            σ_t, the SDE diffusion coefficient *without* the √|dt| factor (§1). For ``cps`` this is
            ``s`` itself (CPS has no √|dt| factor; it is what flow_grpo's KL divides by). 0 for ``ode``.
        std (`torch.Tensor` of shape `(B,)`):
            s, the per-element std of the Gaussian transition: σ_t·√|dt| (flow_grpo, dance_grpo),
            σ_{j+1}·sin(ηπ/2) (cps), 0 (ode).
        beta (`torch.Tensor` of shape `(B,)`):
            β, the coefficient of v·dt in the mean, so ∂μ/∂v = β·dt.
        dt (`torch.Tensor` of shape `(B,)`):
            |dt| = σ_j − σ_{j+1} > 0 (a positive magnitude).
        x_coef (`torch.Tensor` of shape `(B,)`):
            a, the coefficient of x in the mean.
        v_coef (`torch.Tensor` of shape `(B,)`):
            β·dt with the *signed* (negative) dt: the coefficient of v in the mean.
    """

    std_dev_t: torch.Tensor
    std: torch.Tensor
    beta: torch.Tensor
    dt: torch.Tensor
    x_coef: torch.Tensor
    v_coef: torch.Tensor


@dataclass(frozen=True)
class SDEStep:
    """Result of one denoising step (:func:`sde_step`).

    Tensors are in the step's compute dtype: float32, or float64 when ``velocity`` or ``latents``
    is float64. Cast ``prev_sample`` back to the model dtype yourself before the next forward.

    Attributes:
        prev_sample (`torch.Tensor`, shaped like `latents`):
            x', the next latent at ``sigma_next`` (drawn, or the given ``prev_sample``).
        mean (`torch.Tensor`, shaped like `latents`):
            μ, the transition mean; differentiable w.r.t. ``velocity``.
        std (`torch.Tensor` of shape `(B, 1, ..., 1)`):
            s, the per-element transition std, broadcastable to ``latents``.
        log_prob (`torch.Tensor` of shape `(B,)`):
            log p(x' | x) averaged over all non-batch dims (§2.1); zeros where ``s = 0`` (ode, η = 0,
            cps into σ = 0). With ``dynamics="cps"`` and ``cps_logprob="flow_grpo"`` this is
            flow_grpo's unscaled −mean_D (x' − μ)² instead (§2.3).
        std_dev_t (`torch.Tensor` of shape `(B,)`): σ_t (see :class:`StepConstants`).
        beta (`torch.Tensor` of shape `(B,)`): β, the coefficient of v·dt in the mean.
        dt (`torch.Tensor` of shape `(B,)`): |dt| = σ − σ_next.
    """

    prev_sample: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor
    std_dev_t: torch.Tensor
    beta: torch.Tensor
    dt: torch.Tensor


# ----------------------------------------------------------------------------- sigma table


def flow_sigmas(num_steps: int, shift: float = 3.0, *, num_train_timesteps: int = 1000,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The sampling sigma table of diffusers' ``FlowMatchEulerDiscreteScheduler`` (ALGORITHM.md §1.1).

    ``σ_raw = linspace(1, σ_min, T)`` with ``σ_min = shift(1/num_train_timesteps)`` (rounded to float32,
    as the scheduler stores it), then ``shift(σ) = shift·σ / (1 + (shift − 1)·σ)``, then a final 0 is
    appended. Matches ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)``
    (static shift, as SD3.5 uses) bit for bit in float32. Resolution-dependent (dynamic) shifting,
    as FLUX uses, is not modelled here: store the pipeline's own table instead (§1 rule 4).

    Args:
        num_steps (`int`): T, the number of denoising steps (≥ 1).
        shift (`float`, defaults to 3.0): the scheduler's shift (SD3.5-M uses 3).
        num_train_timesteps (`int`, defaults to 1000): the scheduler's training timesteps.
        dtype (`torch.dtype`, defaults to `torch.float32`): dtype of the result.
        device (`torch.device` or `str`, *optional*): device of the result.

    Returns:
        `torch.Tensor` of shape `(T + 1,)`: σ_0 = 1 > σ_1 > … > σ_T = 0.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"flow_sigmas: `num_steps` must be an int >= 1, got {num_steps!r}")
    if not _is_real(shift) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"flow_sigmas: `shift` must be a finite number > 0, got {shift!r}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"flow_sigmas: `num_train_timesteps` must be an int >= 1, got {num_train_timesteps!r}")
    shift = float(shift)
    # The scheduler's training table is float32; its last entry is σ_min.
    s_min32 = torch.tensor(1.0 / num_train_timesteps, dtype=torch.float32)
    sigma_min = float(shift * s_min32 / (1 + (shift - 1) * s_min32))
    sigma_max = 1.0  # shift(1) = 1 exactly
    raw = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps) / num_train_timesteps
    shifted = shift * raw / (1 + (shift - 1) * raw)
    sig = torch.from_numpy(shifted).to(torch.float32)  # the scheduler rounds to float32 here
    sig = torch.cat([sig, torch.zeros(1, dtype=torch.float32)])
    return sig.to(dtype=dtype, device=device)


# ----------------------------------------------------------------------------- constants


def step_constants(sigma: SigmaLike, sigma_next: SigmaLike, *, noise_level: float = 0.7,
                   dynamics: str = "flow_grpo", batch_size: int | None = None,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> StepConstants:
    """Per-sample constants σ_t, s, β, |dt| and the mean's coefficients (ALGORITHM.md §1.1, §2.1–2.3).

    - ``flow_grpo`` (§2.1): σ_t = η·√(t/(1 − t)). At t = 1 the denominator uses σ_1, the second
      entry of the sigma table; a step starting at t = 1 is step 0, whose ``sigma_next`` *is* σ_1, so
      ``sigma_next`` is substituted: σ_t(1) = η·√(1/(1 − σ_next)). s = σ_t·√|dt|,
      a = 1 + σ_t²·dt/(2t), β = 1 + σ_t²·(1 − t)/(2t) (= 1 at t = 1, 1 + η²/2 elsewhere).
    - ``dance_grpo`` (§2.2): σ_t = η, s = η·√|dt|, a = 1 + η²·dt/(2t), β = 1 + η²·(1 − t)/(2t).
    - ``cps`` (§2.3): s = σ_t = σ_{j+1}·sin(ηπ/2), c = √(σ_{j+1}² − s²);
      μ = (1 − σ_{j+1})·(x − t·v) + c·(x + (1 − t)·v), so a = 1 − σ_{j+1} + c and
      β·dt = −(1 − σ_{j+1})·t + c·(1 − t).
    - ``ode``: s = σ_t = 0, a = 1, β = 1 (plain Euler, μ = x + v·dt).

    Args:
        sigma (`float` or `torch.Tensor` of shape `(B,)`): t = σ_j ∈ (0, 1].
        sigma_next (`float` or `torch.Tensor` of shape `(B,)`): σ_{j+1} ∈ [0, σ_j).
        noise_level (`float`, defaults to 0.7): η ≥ 0 (≤ 1 for ``cps``).
        dynamics (`str`, defaults to `"flow_grpo"`): one of ``flow_grpo``, ``dance_grpo``, ``cps``, ``ode``.
        batch_size (`int`, *optional*): B, needed when both sigmas are floats and B > 1.
        dtype (`torch.dtype`, defaults to `torch.float64`): dtype of the constants.
        device (`torch.device` or `str`, *optional*): device of the constants.

    Returns:
        :class:`StepConstants` with ``(B,)`` tensors.
    """
    _check_dynamics(dynamics, noise_level, "step_constants")
    t, tn = _sigma_pair(sigma, sigma_next, batch_size, dtype, device, "step_constants")
    checks = _sigma_checks(sigma, sigma_next, t, tn, "step_constants")
    _raise_failed(checks)
    return _constants(t, tn, float(noise_level), dynamics)


def _constants(t: torch.Tensor, tn: torch.Tensor, eta: float, dynamics: str) -> StepConstants:
    dt = tn - t  # signed, < 0
    dt_abs = t - tn
    if dynamics == "ode":
        zero = torch.zeros_like(t)
        one = torch.ones_like(t)
        return StepConstants(std_dev_t=zero, std=zero, beta=one, dt=dt_abs, x_coef=one, v_coef=dt)
    if dynamics == "cps":
        s = tn * math.sin(eta * math.pi / 2)
        c = torch.sqrt((tn * tn - s * s).clamp_min(0))
        x_coef = (1 - tn) + c
        v_coef = -(1 - tn) * t + c * (1 - t)
        return StepConstants(std_dev_t=s, std=s, beta=v_coef / dt, dt=dt_abs, x_coef=x_coef, v_coef=v_coef)
    if dynamics == "flow_grpo":
        t_den = torch.where(t == 1, tn, t)  # §2.1: σ_1 replaces t in the denominator at t = 1
        std_dev_t = eta * torch.sqrt(t / (1 - t_den))
    else:  # dance_grpo
        std_dev_t = torch.full_like(t, eta)
    var_t = std_dev_t * std_dev_t
    beta = 1 + var_t * (1 - t) / (2 * t)
    return StepConstants(std_dev_t=std_dev_t, std=std_dev_t * torch.sqrt(dt_abs), beta=beta, dt=dt_abs,
                         x_coef=1 + var_t * dt / (2 * t), v_coef=beta * dt)


# ----------------------------------------------------------------------------- log-prob


def step_log_prob(prev_sample: torch.Tensor, mean: torch.Tensor, std: SigmaLike, *,
                  form: str = "gaussian") -> torch.Tensor:
    """Per-sample log-probability of ``prev_sample`` under N(mean, std²), averaged over D (§2.1, §2.3).

    ``gaussian``: ``mean_D[−(x' − μ)²/(2s²)] − log s − ½·log 2π``; samples with ``s = 0`` (a
    deterministic step) get 0. ``neg_mse``: flow_grpo's CPS form ``−mean_D (x' − μ)²``, with every
    constant dropped. ``prev_sample`` is detached; gradients flow through ``mean`` only.

    Args:
        prev_sample (`torch.Tensor` of shape `(B, ...)`): x', the next latent (treated as a constant).
        mean (`torch.Tensor` of shape `(B, ...)`): μ, the transition mean.
        std (`float` or `torch.Tensor` of shape `(B,)` or `(B, 1, ..., 1)`): s, the per-element std.
        form (`str`, defaults to `"gaussian"`): ``gaussian`` or ``neg_mse``.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    if form not in LOG_PROB_FORMS:
        raise ValueError(f"step_log_prob: `form` must be one of {LOG_PROB_FORMS}, got {form!r}")
    if prev_sample.shape != mean.shape:
        raise ValueError(f"step_log_prob: `prev_sample` {tuple(prev_sample.shape)} and `mean` "
                         f"{tuple(mean.shape)} must have the same shape")
    sq = (prev_sample.detach() - mean).square().mean(dim=tuple(range(1, mean.ndim)))  # (B,)
    s = None if form == "neg_mse" else _per_sample(std, mean.shape[0], mean.dtype, mean.device, "std", "step_log_prob")
    return _log_prob_from_sq(sq, s, form)


def _log_prob_from_sq(sq: torch.Tensor, s: torch.Tensor | None, form: str) -> torch.Tensor:
    """log p from sq = mean_D (x' − μ)², shape (B,); s (B,) is unused by ``neg_mse``."""
    if form == "neg_mse":
        return -sq
    positive = s > 0
    s_safe = torch.where(positive, s, torch.ones_like(s))
    lp = -sq / (2 * s_safe * s_safe) - torch.log(s_safe) - _HALF_LOG_2PI
    return torch.where(positive, lp, torch.zeros_like(lp))


# ----------------------------------------------------------------------------- the step


def sde_step(velocity: torch.Tensor, latents: torch.Tensor, sigma: SigmaLike, sigma_next: SigmaLike, *,
             noise_level: float = 0.7, dynamics: str = "flow_grpo", prev_sample: torch.Tensor | None = None,
             generator: GeneratorLike = None, cps_logprob: str = "flow_grpo", validate: bool = True) -> SDEStep:
    """One denoising step x(σ) → x'(σ_next) with its Gaussian log-probability (ALGORITHM.md §2).

    The mean is ``μ = a·x + β·v·dt`` with the per-sample constants of :func:`step_constants`:

    - ``flow_grpo`` (§2.1): σ_t = η·√(t/(1 − t)); at t = 1, σ_1 replaces t in the denominator, and
      since a step starting at t = 1 is step 0, σ_1 = ``sigma_next`` is used. s = σ_t·√|dt|.
    - ``dance_grpo`` (§2.2): σ_t = η, s = η·√|dt|.
    - ``cps`` (§2.3): s = σ_next·sin(ηπ/2), μ = (1 − σ_next)·x̂₀ + √(σ_next² − s²)·x̂₁ with
      x̂₀ = x − t·v and x̂₁ = x + (1 − t)·v. ``cps_logprob`` picks flow_grpo's unscaled
      −mean_D (x' − μ)² or the Gaussian density.
    - ``ode``: plain Euler, μ = x + v·dt, s = 0, log-prob zeros. η = 0 reduces every SDE to this (I2).

    Then x' = μ + s·ξ (ξ ~ N(0, I), drawn in the compute dtype) unless ``prev_sample`` is given, in
    which case it is used as x' and nothing is drawn: the training path, which reproduces the
    sampling log-prob bit for bit (I3). With η = 0 or ``ode`` nothing is drawn either.

    Args:
        velocity (`torch.Tensor` of shape `(B, ...)`):
            v_θ(x, σ), the model's (guided) velocity prediction, any float dtype (upcast to float32).
        latents (`torch.Tensor`, shaped like `velocity`):
            x, the latent at noise level ``sigma``.
        sigma (`float` or `torch.Tensor` of shape `(B,)`):
            t = σ_j ∈ (0, 1], per sample or shared. Store it with the rollout (§1 rule 4).
        sigma_next (`float` or `torch.Tensor` of shape `(B,)`):
            σ_{j+1} ∈ [0, 1], strictly below ``sigma``.
        noise_level (`float`, defaults to 0.7):
            η ≥ 0 (Flow-GRPO 0.7, DanceGRPO 0.3, CPS 0.8; at most 1 for ``cps``).
        dynamics (`str`, defaults to `"flow_grpo"`):
            ``flow_grpo``, ``dance_grpo``, ``cps`` or ``ode``.
        prev_sample (`torch.Tensor`, shaped like `latents`, *optional*):
            The stored next latent x'. Given: log-probs are recomputed for it (detached) and no noise
            is drawn.
        generator (`torch.Generator` or list of `torch.Generator`, *optional*):
            RNG for ξ. A list holds one generator per sample, and sample b's noise then depends only on
            ``generator[b]`` (as diffusers' ``randn_tensor``).
        cps_logprob (`str`, defaults to `"flow_grpo"`):
            ``flow_grpo`` (−mean_D (x' − μ)², no constants) or ``gaussian``. Only used by ``cps``.
        validate (`bool`, defaults to `True`):
            Check values (finite inputs, sigma ranges). Costs one device sync; shapes and names are
            always checked.

    Returns:
        :class:`SDEStep`.

    Raises:
        ValueError: naming the argument, for unknown ``dynamics``/``cps_logprob``, a bad
            ``noise_level``, mismatched shapes, σ outside [0, 1], ``sigma_next >= sigma``,
            non-finite inputs or a generator list of the wrong length.
    """
    fn = "sde_step"
    # 1. Check arguments that cost no device sync.
    _check_dynamics(dynamics, noise_level, fn)
    if cps_logprob not in CPS_LOGPROBS:
        raise ValueError(f"{fn}: `cps_logprob` must be one of {CPS_LOGPROBS}, got {cps_logprob!r}")
    for name, x in (("velocity", velocity), ("latents", latents)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{fn}: `{name}` must be a floating-point tensor, got {_describe(x)}")
    if latents.ndim < 2:
        raise ValueError(f"{fn}: `latents` must have a batch dim and at least one more, got shape {tuple(latents.shape)}")
    if velocity.shape != latents.shape:
        raise ValueError(f"{fn}: `velocity` {tuple(velocity.shape)} and `latents` {tuple(latents.shape)} "
                         "must have the same shape")
    if prev_sample is not None:
        if not isinstance(prev_sample, torch.Tensor) or not prev_sample.is_floating_point():
            raise ValueError(f"{fn}: `prev_sample` must be a floating-point tensor, got {_describe(prev_sample)}")
        if prev_sample.shape != latents.shape:
            raise ValueError(f"{fn}: `prev_sample` {tuple(prev_sample.shape)} must have the shape of "
                             f"`latents` {tuple(latents.shape)}")
    batch = latents.shape[0]
    if isinstance(generator, Sequence) and len(generator) != batch:
        raise ValueError(f"{fn}: `generator` is a list of {len(generator)} generators but the batch has {batch} samples")

    # 2. Upcast: step math in float32 (float64 stays float64), §1 rule 1.
    dtype = torch.float64 if torch.float64 in (velocity.dtype, latents.dtype) else torch.float32
    device = latents.device
    t, tn = _sigma_pair(sigma, sigma_next, batch, dtype, device, fn)

    # 3. Check the sigmas given as floats now; tensor checks wait for one fused sync (step 7).
    checks = _sigma_checks(sigma, sigma_next, t, tn, fn) if validate else []
    _raise_failed([c for c in checks if not isinstance(c[1], torch.Tensor)])

    # 4. Mean and std.
    eta = float(noise_level)
    k = _constants(t, tn, eta, dynamics)
    bshape = (batch,) + (1,) * (latents.ndim - 1)
    v = velocity.to(dtype)
    x = latents.to(dtype)
    mean = x * k.x_coef.view(bshape) + v * k.v_coef.view(bshape)
    std = k.std.view(bshape)

    # 5. Next sample: given, or drawn.
    if prev_sample is not None:
        x_next = prev_sample.detach().to(dtype)
    elif dynamics == "ode" or eta == 0.0:
        x_next = mean.detach()
    else:
        noise = _randn(latents.shape, generator, device, dtype)
        x_next = (mean + std * noise).detach()

    # 6. Log-probability, averaged over the non-batch dims.
    sq = None
    if dynamics == "ode":
        log_prob = torch.zeros(batch, dtype=dtype, device=device)
    else:
        form = "neg_mse" if dynamics == "cps" and cps_logprob == "flow_grpo" else "gaussian"
        sq = (x_next - mean).square().mean(dim=tuple(range(1, mean.ndim)))  # (B,)
        log_prob = _log_prob_from_sq(sq, k.std, form)

    # 7. Value checks, one sync. NaN/inf in v, x or x' always reaches sq = mean_D (x' − μ)² (NaN·0 is
    #    NaN), so a (B,) probe replaces three passes over the latents; the inputs are examined one by
    #    one only when the probe fails, to name the culprit.
    if validate:
        inputs = [(f"{fn}: `{name}` contains NaN or inf", x)
                  for name, x in (("velocity", velocity), ("latents", latents), ("prev_sample", prev_sample))
                  if x is not None]
        if sq is None:
            checks += [(msg, torch.isfinite(x).all()) for msg, x in inputs]
        else:
            checks.append((f"{fn}: (x' − μ)² overflowed: `velocity`, `latents` or `prev_sample` is too large",
                           torch.isfinite(sq.detach()).all(), inputs))
        _raise_failed(checks)
    return SDEStep(prev_sample=x_next, mean=mean, std=std, log_prob=log_prob,
                   std_dev_t=k.std_dev_t, beta=k.beta, dt=k.dt)


# ----------------------------------------------------------------------------- helpers


def _check_dynamics(dynamics: str, noise_level: float, fn: str) -> None:
    if dynamics not in DYNAMICS:
        raise ValueError(f"{fn}: `dynamics` must be one of {DYNAMICS}, got {dynamics!r}")
    if not _is_real(noise_level) or not math.isfinite(noise_level) or noise_level < 0:
        raise ValueError(f"{fn}: `noise_level` must be a finite number >= 0, got {noise_level!r}")
    if dynamics == "cps" and noise_level > 1:
        raise ValueError(f"{fn}: `noise_level` must be <= 1 for dynamics='cps' (s = σ_next·sin(ηπ/2) must stay "
                         f"below σ_next), got {noise_level!r}")


def _sigma_pair(sigma, sigma_next, batch, dtype, device, fn):
    if batch is None:
        sizes = [x.numel() for x in (sigma, sigma_next) if isinstance(x, torch.Tensor) and x.numel() > 1]
        batch = sizes[0] if sizes else 1
    return (_per_sample(sigma, batch, dtype, device, "sigma", fn),
            _per_sample(sigma_next, batch, dtype, device, "sigma_next", fn))


def _sigma_checks(sigma, sigma_next, t, tn, fn) -> list[Check]:
    """(message, ok) pairs; floats are checked in Python, tensors lazily (see :func:`_raise_failed`)."""
    checks: list[Check] = []
    for name, raw, val in (("sigma", sigma, t), ("sigma_next", sigma_next, tn)):
        msg = f"{fn}: `{name}` must be finite and in [0, 1]" + (f", got {raw!r}" if _is_real(raw) else "")
        ok = (math.isfinite(raw) and 0 <= raw <= 1) if _is_real(raw) else ((val >= 0) & (val <= 1)).all()
        checks.append((msg, ok))
    msg = "`sigma_next` must be < `sigma` (denoising goes from σ_j down to σ_{j+1})"
    if _is_real(sigma) and _is_real(sigma_next):
        checks.append((f"{fn}: {msg}, got sigma={sigma!r}, sigma_next={sigma_next!r}", sigma_next < sigma))
    else:
        checks.append((f"{fn}: {msg} for every sample", (tn < t).all()))
    return checks


def _randn(shape: torch.Size, generator: GeneratorLike, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise; with a list of generators, row b comes from ``generator[b]`` alone."""
    if isinstance(generator, Sequence):
        rows = [_randn((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows, dim=0)
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"sde_step: `generator` must be a torch.Generator or a list of them, got {_describe(generator)}")
    gen_device = generator.device
    if gen_device.type == torch.device(device).type:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)

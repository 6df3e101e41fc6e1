"""Group advantages, the Flow-GRPO PPO surrogate, GRPO-Guard RatioNorm and gradient reweighting.

Pure functions of tensors (``reference/ALGORITHM.md`` §3–§4, statistics §8). One call of
:func:`policy_loss` is one denoising step j of one micro-batch; samples may sit at different steps
(DanceGRPO), since every schedule constant is per sample (§1 rule 5).

What runs, per sample i (§3.2, §4.2–4.4):

    Δ_i      = log p_θ,i − log p_old,i                       raw log-ratio (Flow-GRPO)
    log r̂_i  = mean_D[ε_i ⊙ (μ_θ,i − μ_old,i)],  ε_i = (x'_i − μ_old,i)/s_i      RatioNorm (Guard)
             = s_i·(Δ_i + bias_i),  bias_i = mean_D (μ_θ,i − μ_old,i)²/(2s_i²)   (same value)
    L_i      = δ_i·max(−A_i·r_i, −A_i·clip(r_i, 1 − ε_c, 1 + ε_c)) + β_KL·KL_i
    loss     = mean_B L_i

The bias is per sample and stays attached to the graph (the fix of flow_grpo issue #244; not the
released code's batch-mean bias).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grpo_guard.checks import _check_like, _describe, _is_real, _per_sample, _raise_failed
from grpo_guard.sde import LOG_PROB_FORMS
from grpo_guard.step_stats import _step_stats, ratio_histogram

__all__ = [
    "DELTAS",
    "STD_SCOPES",
    "PolicyLossOutput",
    "group_advantages",
    "kl_to_reference",
    "normalized_log_ratio",
    "per_sample_bias",
    "policy_loss",
    "ratio_histogram",
    "reweight_delta",
    "zero_variance_mask",
]

STD_SCOPES: tuple[str, ...] = ("global", "group")
DELTAS: tuple[str, ...] = ("inv_dt", "beta_over_dt", "inv_beta_dt", "none")
ADV_EPS = 1e-4  # §3.1: A = (R − mean_group)/(std + 1e-4)

Scalar = float | torch.Tensor


# ----------------------------------------------------------------------------- advantages


def _group_index(group_ids, batch: int, device) -> torch.Tensor:
    """Group ids (tensor of ints, or any sequence of hashables such as prompt strings) → (B,) long 0..G−1."""
    if isinstance(group_ids, torch.Tensor):
        if group_ids.ndim != 1 or group_ids.shape[0] != batch:
            raise ValueError(f"`group_ids` must have shape ({batch},) like `rewards`, got {tuple(group_ids.shape)}")
        if group_ids.is_floating_point() or group_ids.is_complex():
            raise ValueError("`group_ids` must hold integers (or be a sequence of hashable ids), got floats")
        return torch.unique(group_ids, return_inverse=True)[1].to(device)
    if not isinstance(group_ids, Sequence) or isinstance(group_ids, str):
        raise ValueError(f"`group_ids` must be a tensor or a sequence of ids, got {_describe(group_ids)}")
    if len(group_ids) != batch:
        raise ValueError(f"`group_ids` has {len(group_ids)} entries but `rewards` has {batch}")
    index: dict = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long, device=device)


def _rewards_1d(rewards) -> torch.Tensor:
    r = rewards if isinstance(rewards, torch.Tensor) else torch.as_tensor(rewards)
    if r.ndim != 1 or r.shape[0] == 0:
        raise ValueError(f"`rewards` must be a non-empty 1-D tensor (B,), got shape {tuple(r.shape)}")
    if r.is_complex() or r.dtype == torch.bool:
        raise ValueError(f"`rewards` must be real numbers, got dtype {r.dtype}")
    r = r.to(torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("`rewards` contains NaN or inf")
    return r


def zero_variance_mask(rewards: torch.Tensor | Sequence[float], group_ids) -> torch.Tensor:
    """Which samples belong to a group whose rewards are all equal (ALGORITHM.md §3.1, I12).

    Those samples get A = 0 exactly from :func:`group_advantages`; the trainer drops them (and
    reports the fraction of such groups as ``zero_std_ratio``).

    Args:
        rewards (`torch.Tensor` of shape `(B,)` or a sequence of floats): total reward R_i per sample.
        group_ids (`torch.Tensor` of shape `(B,)` of ints, or a sequence of hashables such as prompts):
            the group (prompt) of each sample.

    Returns:
        `torch.Tensor` of shape `(B,)`, dtype bool: True where the sample's group has zero variance.
    """
    r = _rewards_1d(rewards)
    idx = _group_index(group_ids, r.shape[0], r.device)
    n = int(idx.max()) + 1
    hi = torch.full((n,), -math.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amax")
    lo = torch.full((n,), math.inf, dtype=r.dtype, device=r.device).scatter_reduce(0, idx, r, "amin")
    return (hi == lo)[idx]


def group_advantages(rewards: torch.Tensor | Sequence[float], group_ids, *, std_scope: str = "global",
                     clip: float | None = 5.0) -> torch.Tensor:
    """GRPO group-normalised advantages (ALGORITHM.md §3.1).

        A_i = clamp((R_i − mean_{j ∈ group(i)} R_j) / (std + 1e-4), −clip, clip)

    ``std`` is the population std (ddof = 0) of all rewards (``std_scope="global"``, Flow-GRPO SD3
    configs) or of the group's own rewards (``"group"``, Guard configs). Samples of a zero-variance
    group get A = 0 exactly (see :func:`zero_variance_mask`). Computed in float64.

    Args:
        rewards (`torch.Tensor` of shape `(B,)` or a sequence of floats):
            R_i, the total (weighted-sum) reward of each sample, gathered over all workers.
        group_ids (`torch.Tensor` of shape `(B,)` of ints, or a sequence of hashables such as prompts):
            the group of each sample; one group per prompt. All equal ⇒ A = (R − mean)/(std + 1e-4).
        std_scope (`str`, defaults to `"global"`): ``global`` or ``group``.
        clip (`float`, *optional*, defaults to 5.0): the clamp ``adv_clip_max``; ``None`` disables it.

    Returns:
        `torch.Tensor` of shape `(B,)`: float64 for float64 rewards, else float32.
    """
    if std_scope not in STD_SCOPES:
        raise ValueError(f"group_advantages: `std_scope` must be one of {STD_SCOPES}, got {std_scope!r}")
    if clip is not None and (not _is_real(clip) or not clip > 0 or math.isnan(clip)):
        raise ValueError(f"group_advantages: `clip` must be a number > 0 or None, got {clip!r}")
    out_dtype = rewards.dtype if isinstance(rewards, torch.Tensor) and rewards.dtype == torch.float64 else torch.float32
    r = _rewards_1d(rewards)
    idx = _group_index(group_ids, r.shape[0], r.device)
    n = int(idx.max()) + 1
    counts = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, idx, torch.ones_like(r))
    means = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, idx, r) / counts
    centered = r - means[idx]
    if std_scope == "global":
        std = r.std(correction=0)
    else:
        var = torch.zeros(n, dtype=r.dtype, device=r.device).index_add_(0, idx, centered * centered) / counts
        std = var.sqrt()[idx]
    adv = centered / (std + ADV_EPS)
    adv = torch.where(zero_variance_mask(r, idx), torch.zeros_like(adv), adv)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.to(out_dtype)


# ----------------------------------------------------------------------------- building blocks


def per_sample_bias(mean: torch.Tensor, old_mean: torch.Tensor, std: Scalar) -> torch.Tensor:
    """The deterministic left shift of the log-ratio, per sample (ALGORITHM.md §4.1–4.2, §8 ``bias``).

        bias_i = mean_D (μ_θ,i − μ_old,i)² / (2 s_i²)

    Differentiable through ``mean`` (do not detach it: I8). It is also the exact per-element Gaussian
    KL from the new to the old transition.

    Args:
        mean (`torch.Tensor` of shape `(B, ...)`): μ_θ, the current policy's transition mean.
        old_mean (`torch.Tensor`, shaped like `mean`): μ_old from the rollout (constant).
        std (`float` or `torch.Tensor` of shape `(B,)` or `(B, 1, ..., 1)`): s, per-element std (> 0).

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    _check_like(mean, old_mean, "old_mean", "per_sample_bias")
    s = _per_sample(std, mean.shape[0], mean.dtype, mean.device, "std", "per_sample_bias").detach()
    d2 = (mean - old_mean.detach()).square().mean(dim=tuple(range(1, mean.ndim)))
    return d2 / (2 * s * s)


def normalized_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor,
                         old_mean: torch.Tensor, std: Scalar, *, prev_sample: torch.Tensor | None = None,
                         log_prob_form: str = "gaussian") -> torch.Tensor:
    """GRPO-Guard RatioNorm log-ratio log r̂, per sample (ALGORITHM.md §4.2, paper Eq. 8).

    With ``prev_sample`` (x'), the clean form, free of the O(1) − O(1) cancellation:

        log r̂_i = mean_D[ε_i ⊙ (μ_θ,i − μ_old,i)],    ε_i = (x'_i − μ_old,i) / s_i

    Without it, the implemented form, identical in value and gradient (I5):

        gaussian log-probs:  log r̂_i = s_i·(Δ_i + mean_D d_i²/(2 s_i²))
        neg_mse (CPS, flow_grpo's −mean_D (x' − μ)²):  log r̂_i = (Δ_i + mean_D d_i²)/(2 s_i)

    where Δ_i = log p_θ,i − log p_old,i and d = μ_θ − μ_old. Positive when μ_θ moved toward x'.
    Gradients flow through ``mean`` and ``log_prob``; everything else is treated as constant.

    Args:
        log_prob (`torch.Tensor` of shape `(B,)`): log p_θ(x' | x) from :func:`~grpo_guard.sde.sde_step`.
        old_log_prob (`torch.Tensor` of shape `(B,)`): the rollout's log-prob.
        mean (`torch.Tensor` of shape `(B, ...)`): μ_θ.
        old_mean (`torch.Tensor`, shaped like `mean`): μ_old.
        std (`float` or `torch.Tensor` of shape `(B,)` or `(B, 1, ..., 1)`): s (> 0).
        prev_sample (`torch.Tensor`, shaped like `mean`, *optional*): x'; selects the clean form.
        log_prob_form (`str`, defaults to `"gaussian"`): ``gaussian`` or ``neg_mse`` (ignored by the
            clean form, which is sampler-agnostic).

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    if log_prob_form not in LOG_PROB_FORMS:
        raise ValueError(f"normalized_log_ratio: `log_prob_form` must be one of {LOG_PROB_FORMS}, got {log_prob_form!r}")
    _check_like(mean, old_mean, "old_mean", "normalized_log_ratio")
    if prev_sample is not None:
        _check_like(mean, prev_sample, "prev_sample", "normalized_log_ratio")
    s = _per_sample(std, mean.shape[0], mean.dtype, mean.device, "std", "normalized_log_ratio").detach()
    d = mean - old_mean.detach()
    d2 = None if prev_sample is not None else d.square().mean(dim=tuple(range(1, mean.ndim)))
    return _log_ratio_hat(log_prob - old_log_prob.detach(), d, d2, s, old_mean, prev_sample, log_prob_form)


def _log_ratio_hat(delta_log_p, d, d2, s, old_mean, prev_sample, form) -> torch.Tensor:
    """log r̂ (B,) from Δ log p (B,), d = μ_θ − μ_old, d2 = mean_D d² (B,) and s (B,); see normalized_log_ratio."""
    if prev_sample is not None:  # clean form
        s_b = s.view((s.shape[0],) + (1,) * (d.ndim - 1))
        eps = (prev_sample.detach() - old_mean.detach()) / s_b
        return (eps * d).mean(dim=tuple(range(1, d.ndim)))
    if form == "gaussian":  # implemented form
        return s * (delta_log_p + d2 / (2 * s * s))
    return (delta_log_p + d2) / (2 * s)


def reweight_delta(dt: Scalar, *, delta: str = "inv_dt", beta: Scalar | None = None,
                   batch_size: int | None = None) -> torch.Tensor:
    """GRPO-Guard per-sample gradient weight δ (ALGORITHM.md §4.3, paper Eq. 11–12).

    ``inv_dt``: 1/|dt| (Flow-SDE; per-step scale δ·β·|dt| = β). ``beta_over_dt``: β/|dt| (Dance-SDE,
    paper form). ``inv_beta_dt``: 1/(β·|dt|) (exact equaliser). ``none``: 1. |dt| is always used,
    whatever the sign of the given dt.

    Args:
        dt (`float` or `torch.Tensor` of shape `(B,)`): dt or |dt| per sample (nonzero).
        delta (`str`, defaults to `"inv_dt"`): one of ``inv_dt``, ``beta_over_dt``, ``inv_beta_dt``, ``none``.
        beta (`float` or `torch.Tensor` of shape `(B,)`, *optional*): β, needed by the two β forms.
        batch_size (`int`, *optional*): B when ``dt`` is a float.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    if delta not in DELTAS:
        raise ValueError(f"reweight_delta: `delta` must be one of {DELTAS}, got {delta!r}")
    if delta in ("beta_over_dt", "inv_beta_dt") and beta is None:
        raise ValueError(f"reweight_delta: delta={delta!r} needs `beta` (SDEStep.beta)")
    ref = next((x for x in (dt, beta) if isinstance(x, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    device = ref.device if ref is not None else None
    if batch_size is None:
        batch_size = max([x.numel() for x in (dt, beta) if isinstance(x, torch.Tensor)] or [1])
    dt_abs = _per_sample(dt, batch_size, dtype, device, "dt", "reweight_delta").detach().abs()
    if delta == "none":
        return torch.ones_like(dt_abs)
    if delta == "inv_dt":
        return 1 / dt_abs
    b = _per_sample(beta, batch_size, dtype, device, "beta", "reweight_delta").detach()
    return b / dt_abs if delta == "beta_over_dt" else 1 / (b * dt_abs)


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std_dev_t: Scalar) -> torch.Tensor:
    """Flow-GRPO's KL to the reference policy, per sample (ALGORITHM.md §3.3).

        KL_i = mean_D (μ_θ,i − μ_ref,i)² / (2 σ_t,i²)        (σ_t without √|dt|)

    This is |dt| × the exact per-element Gaussian KL. The loss term is β_KL·mean_B KL_i.

    Args:
        mean (`torch.Tensor` of shape `(B, ...)`): μ_θ.
        ref_mean (`torch.Tensor`, shaped like `mean`): μ_ref, the reference model's mean (no grad).
        std_dev_t (`float` or `torch.Tensor` of shape `(B,)`): σ_t (``SDEStep.std_dev_t``), > 0.

    Returns:
        `torch.Tensor` of shape `(B,)`.
    """
    _check_like(mean, ref_mean, "ref_mean", "kl_to_reference")
    sd = _per_sample(std_dev_t, mean.shape[0], mean.dtype, mean.device, "std_dev_t", "kl_to_reference").detach()
    d2 = (mean - ref_mean.detach()).square().mean(dim=tuple(range(1, mean.ndim)))
    return d2 / (2 * sd * sd)


@dataclass(frozen=True)
class PolicyLossOutput:
    """Result of :func:`policy_loss`.

    Attributes:
        loss (`torch.Tensor`, scalar): mean_B of ``per_sample``; call ``backward`` on it.
        stats (`dict[str, float]`): ALGORITHM.md §8 statistics for this step (empty when
            ``compute_stats=False``); see :func:`policy_loss` for the keys.
        per_sample (`torch.Tensor` of shape `(B,)`): δ_i·(clipped surrogate)_i + β_KL·KL_i.
        log_ratio (`torch.Tensor` of shape `(B,)`): the log-ratio used in the surrogate (log r̂ with
            RatioNorm, else Δ log p), differentiable.
        delta (`torch.Tensor` of shape `(B,)`): the per-sample weights δ (ones without reweighting).
    """

    loss: torch.Tensor
    stats: dict[str, float]
    per_sample: torch.Tensor
    log_ratio: torch.Tensor
    delta: torch.Tensor


def policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, *,
                clip_range: float, ratio_norm: bool = False, grad_reweight: bool = False,
                mean: torch.Tensor | None = None, old_mean: torch.Tensor | None = None, std: Scalar | None = None,
                dt: Scalar | None = None, delta: str = "inv_dt", beta: Scalar | None = None,
                prev_sample: torch.Tensor | None = None, kl_beta: float = 0.0, ref_mean: torch.Tensor | None = None,
                std_dev_t: Scalar | None = None, adv_clip: float | None = 5.0, log_prob_form: str = "gaussian",
                compute_stats: bool = True, validate: bool = True) -> PolicyLossOutput:
    """Flow-GRPO / GRPO-Guard loss for one denoising step of a micro-batch (ALGORITHM.md §3.2–§4.4).

        L_i  = δ_i·max(−A_i·r_i, −A_i·clip(r_i, 1 − ε_c, 1 + ε_c)) + β_KL·KL_i,     loss = mean_B L_i

    with r = exp(Δ log p) (Flow-GRPO, §3.2) or, with ``ratio_norm``, r̂ = exp(log r̂) (GRPO-Guard
    RatioNorm, §4.2, per-sample bias, see :func:`normalized_log_ratio`). With ``prev_sample`` the clean
    form mean_D[ε ⊙ (μ_θ − μ_old)] is used (recommended: no O(1) − O(1) cancellation in float32);
    without it the implemented form s·(Δ log p + bias), which needs only ``mean``, ``old_mean`` and
    ``std``. δ (``grad_reweight``, §4.3) is per sample and inside the batch mean; the KL term
    (§3.3) is not reweighted. A sample's surrogate gradient is zero exactly when
    (A > 0 ∧ r > 1 + ε_c) ∨ (A < 0 ∧ r < 1 − ε_c) ∨ A = 0 (I11).

    Gradients flow through ``log_prob`` and ``mean`` only; every other tensor is detached.

    Args:
        log_prob (`torch.Tensor` of shape `(B,)`): log p_θ(x' | x), recomputed with grad.
        old_log_prob (`torch.Tensor` of shape `(B,)`): log p_old from the rollout.
        advantages (`torch.Tensor` of shape `(B,)`): A_i (from :func:`group_advantages`).
        clip_range (`float`): ε_c > 0 (Flow-GRPO 1e-4, Guard 2e-6 at D = 65,536).
        ratio_norm (`bool`, defaults to `False`): use GRPO-Guard's r̂; needs ``mean``, ``old_mean``, ``std``.
        grad_reweight (`bool`, defaults to `False`): multiply each sample's surrogate by δ; needs ``dt``.
        mean (`torch.Tensor` of shape `(B, ...)`, *optional*): μ_θ (``SDEStep.mean``, with grad).
        old_mean (`torch.Tensor`, shaped like `mean`, *optional*): μ_old from the rollout.
        std (`float` or `torch.Tensor` of shape `(B,)` or `(B, 1, ..., 1)`, *optional*): s (``SDEStep.std``).
        dt (`float` or `torch.Tensor` of shape `(B,)`, *optional*): |σ_next − σ| (``SDEStep.dt``).
        delta (`str`, defaults to `"inv_dt"`): δ form, see :func:`reweight_delta`.
        beta (`float` or `torch.Tensor` of shape `(B,)`, *optional*): β (``SDEStep.beta``); needed by
            ``beta_over_dt`` and ``inv_beta_dt``, and for the ``eff_weight`` statistic.
        prev_sample (`torch.Tensor`, shaped like `mean`, *optional*): x'; selects RatioNorm's clean form.
        kl_beta (`float`, defaults to 0.0): β_KL ≥ 0; > 0 needs ``mean``, ``ref_mean``, ``std_dev_t``.
        ref_mean (`torch.Tensor`, shaped like `mean`, *optional*): μ_ref from the reference model.
        std_dev_t (`float` or `torch.Tensor` of shape `(B,)`, *optional*): σ_t (``SDEStep.std_dev_t``).
        adv_clip (`float`, *optional*, defaults to 5.0): clamp A to ±adv_clip at loss time (§3.1);
            ``None`` disables it.
        log_prob_form (`str`, defaults to `"gaussian"`): ``neg_mse`` when the log-probs come from
            ``sde_step(dynamics="cps", cps_logprob="flow_grpo")``; used by the implemented form only.
        compute_stats (`bool`, defaults to `True`): fill ``stats`` (one device sync for all of them).
        validate (`bool`, defaults to `True`): check values (finite inputs, positive std/dt/β/σ_t);
            the check shares the stats' sync. Shapes and names are always checked.

    Returns:
        :class:`PolicyLossOutput`. ``stats`` keys (floats; means skip NaN; stds are population stds):
        ``logr_mean``, ``logr_std``, ``r_mean_minus_1``, ``r_std`` (raw ratio); ``logrhat_mean``,
        ``logrhat_std``, ``rhat_mean_minus_1``, ``rhat_std``, ``bias``, ``drift_rms`` (whenever
        ``mean``, ``old_mean`` and ``std`` are given); ``clip_high``, ``clip_low``, ``pos_adv_clipped``,
        ``neg_adv_clipped``, ``grad_zeroed_frac`` (for the ratio in use, fractions of the batch);
        ``approx_kl`` (½·mean Δ²), ``adv_pos_frac``, ``adv_abs_mean``, ``policy_loss``, ``loss``;
        ``kl_ref`` (when ``ref_mean`` and ``std_dev_t`` are given); ``delta_mean`` (with
        ``grad_reweight``); ``eff_weight`` (mean δ·β·|dt|, δ = 1 without reweighting, when ``beta`` and
        ``dt`` are given); ``dt_abs``, ``s``, ``std_dev_t``, ``beta`` (batch means of the given constants).

    Raises:
        ValueError: naming the argument, for a missing input a mode needs, mismatched shapes,
            NaN/inf inputs, a non-positive ``clip_range``/``std``/``dt``, an unknown ``delta`` or
            ``log_prob_form``.
    """
    fn = "policy_loss"
    # 1. Arguments (no device sync).
    if not _is_real(clip_range) or not math.isfinite(clip_range) or clip_range <= 0:
        raise ValueError(f"{fn}: `clip_range` must be a finite number > 0, got {clip_range!r}")
    if delta not in DELTAS:
        raise ValueError(f"{fn}: `delta` must be one of {DELTAS}, got {delta!r}")
    if log_prob_form not in LOG_PROB_FORMS:
        raise ValueError(f"{fn}: `log_prob_form` must be one of {LOG_PROB_FORMS}, got {log_prob_form!r}")
    if not _is_real(kl_beta) or not math.isfinite(kl_beta) or kl_beta < 0:
        raise ValueError(f"{fn}: `kl_beta` must be a finite number >= 0, got {kl_beta!r}")
    if adv_clip is not None and (not _is_real(adv_clip) or not adv_clip > 0):
        raise ValueError(f"{fn}: `adv_clip` must be a number > 0 or None, got {adv_clip!r}")
    for name, x in (("log_prob", log_prob), ("old_log_prob", old_log_prob), ("advantages", advantages)):
        if not isinstance(x, torch.Tensor) or x.ndim != 1 or not x.is_floating_point():
            raise ValueError(f"{fn}: `{name}` must be a 1-D floating-point tensor (B,), got {_describe(x)}")
    batch = log_prob.shape[0]
    for name, x in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        if x.shape[0] != batch:
            raise ValueError(f"{fn}: `{name}` has {x.shape[0]} samples but `log_prob` has {batch}")
    if ratio_norm:
        missing = [n for n, x in (("mean", mean), ("old_mean", old_mean), ("std", std)) if x is None]
        if missing:
            raise ValueError(f"{fn}: ratio_norm=True needs `mean`, `old_mean` and `std`; missing {missing}")
    if grad_reweight:
        if dt is None:
            raise ValueError(f"{fn}: grad_reweight=True needs `dt` (|sigma_next - sigma| per sample, SDEStep.dt)")
        if delta in ("beta_over_dt", "inv_beta_dt") and beta is None:
            raise ValueError(f"{fn}: delta={delta!r} needs `beta` (SDEStep.beta)")
    if kl_beta > 0:
        missing = [n for n, x in (("mean", mean), ("ref_mean", ref_mean), ("std_dev_t", std_dev_t)) if x is None]
        if missing:
            raise ValueError(f"{fn}: kl_beta > 0 needs `mean`, `ref_mean` and `std_dev_t`; missing {missing}")
    latent_like = {n: x for n, x in (("mean", mean), ("old_mean", old_mean), ("prev_sample", prev_sample),
                                     ("ref_mean", ref_mean)) if x is not None}
    shape0 = None
    for name, x in latent_like.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
            raise ValueError(f"{fn}: `{name}` must be a floating-point tensor (B, ...), got {_describe(x)}")
        if x.shape[0] != batch:
            raise ValueError(f"{fn}: `{name}` has {x.shape[0]} samples but `log_prob` has {batch}")
        shape0 = shape0 or (name, x.shape)
        if x.shape != shape0[1]:
            raise ValueError(f"{fn}: `{name}` {tuple(x.shape)} must have the shape of `{shape0[0]}` {tuple(shape0[1])}")
    dtype = torch.promote_types(log_prob.dtype, old_log_prob.dtype)
    if mean is not None:
        dtype = torch.promote_types(dtype, mean.dtype)
    device = log_prob.device
    per = {n: _per_sample(x, batch, dtype, device, n, fn).detach()
           for n, x in (("std", std), ("dt", dt), ("beta", beta), ("std_dev_t", std_dev_t)) if x is not None}

    # 2. Log-ratios: raw Δ, and RatioNorm's log r̂ whenever the means are given (with grad only when it
    #    is the ratio in the loss; for the statistics alone, samples with s = 0 give NaN and are skipped).
    adv = advantages.detach().to(dtype)
    if adv_clip is not None:
        adv = adv.clamp(-adv_clip, adv_clip)
    logr = log_prob - old_log_prob.detach()
    have_means = mean is not None and old_mean is not None and std is not None
    d2 = logrhat = None
    if have_means and (ratio_norm or compute_stats):
        s = per["std"] if ratio_norm else torch.where(per["std"] > 0, per["std"], math.nan)
        with torch.set_grad_enabled(ratio_norm and torch.is_grad_enabled()):
            d = mean - old_mean.detach()
            d2 = d.square().mean(dim=tuple(range(1, mean.ndim)))  # (B,)
            logrhat = _log_ratio_hat(logr, d, d2, s, old_mean, prev_sample, log_prob_form)
    log_ratio = logrhat if ratio_norm else logr

    # 3. Clipped surrogate, per-sample reweighting (inside the batch mean), KL (not reweighted).
    ratio = torch.exp(log_ratio)
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))
    weight = reweight_delta(per["dt"], delta=delta, beta=per.get("beta"), batch_size=batch) if grad_reweight \
        else torch.ones(batch, dtype=dtype, device=device)
    policy_part = weight * surrogate
    per_sample = policy_part
    kl = None
    if mean is not None and ref_mean is not None and std_dev_t is not None and (kl_beta > 0 or compute_stats):
        sd = per["std_dev_t"] if kl_beta > 0 else torch.where(per["std_dev_t"] > 0, per["std_dev_t"], math.nan)
        with torch.set_grad_enabled(kl_beta > 0 and torch.is_grad_enabled()):
            kl = kl_to_reference(mean, ref_mean, sd)
        if kl_beta > 0:
            per_sample = per_sample + kl_beta * kl
    loss = per_sample.mean()

    # 4. Value checks. The (B,) inputs are checked directly; the latent-sized ones through the (B,)
    #    quantities they feed (NaN/inf propagates into d2, log r̂ and KL), and examined one by one
    #    only on failure, to name the culprit. Evaluated with the statistics: one sync in all.
    checks: list = []
    if validate:
        small = {"log_prob": log_prob, "old_log_prob": old_log_prob, "advantages": advantages, **per}
        checks += [(f"{fn}: `{n}` contains NaN or inf", torch.isfinite(x.detach()).all()) for n, x in small.items()]
        if ratio_norm:
            checks.append((f"{fn}: `std` must be > 0 for ratio_norm (s = 0 is a deterministic step)",
                           (per["std"] > 0).all()))
        if grad_reweight:
            checks.append((f"{fn}: `dt` must be nonzero for grad_reweight (δ ∝ 1/|dt|)", (per["dt"] != 0).all()))
            if delta in ("beta_over_dt", "inv_beta_dt"):
                checks.append((f"{fn}: `beta` must be > 0 for delta={delta!r}", (per["beta"] > 0).all()))
        if kl_beta > 0:
            checks.append((f"{fn}: `std_dev_t` must be > 0 for the KL term", (per["std_dev_t"] > 0).all()))

        def culprits(*names):
            return [(f"{fn}: `{n}` contains NaN or inf", latent_like[n].detach()) for n in names if n in latent_like]

        if d2 is not None:
            checks.append((f"{fn}: (μ_θ − μ_old)² overflowed: `mean` or `old_mean` is too large",
                           torch.isfinite(d2.detach()).all(), culprits("mean", "old_mean")))
        if logrhat is not None and prev_sample is not None:
            probe = torch.where(torch.isnan(s), 0.0, logrhat.detach())
            checks.append((f"{fn}: log r̂ overflowed: `prev_sample` is too large", torch.isfinite(probe).all(),
                           culprits("prev_sample", "old_mean", "mean")))
        if kl is not None and kl_beta > 0:
            checks.append((f"{fn}: the KL overflowed: `mean` or `ref_mean` is too large",
                           torch.isfinite(kl.detach()).all(), culprits("mean", "ref_mean")))

    # 5. Statistics (ALGORITHM.md §8), converted together with the checks.
    named: dict[str, torch.Tensor] = {}
    if compute_stats:
        with torch.no_grad():
            named = _step_stats(logr.detach(), None if logrhat is None else logrhat.detach(), ratio.detach(), adv,
                                clip_range, policy_part.detach(), loss.detach(), None if kl is None else kl.detach(),
                                weight if grad_reweight else None, per, None if d2 is None else d2.detach())
    flat = _raise_failed(checks, list(named.values()))
    stats = dict(zip(named, flat, strict=True))
    return PolicyLossOutput(loss=loss, stats=stats, per_sample=per_sample, log_ratio=log_ratio, delta=weight)


# ----------------------------------------------------------------------------- helpers



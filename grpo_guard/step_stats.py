"""Per-denoising-step statistics of one ``policy_loss`` call (``reference/ALGORITHM.md`` §8).

Every value is a 0-d tensor so that ``policy_loss`` converts them together with its argument checks
(one device sync per call). Means skip NaN; stds are population stds.
"""

from __future__ import annotations

import math

import torch

from grpo_guard.checks import _is_real


def ratio_histogram(log_ratio: torch.Tensor, clip_range: float, *, bins: int = 41, span: float = 5.0) -> torch.Tensor:
    """Counts of r − 1 on fixed bins over ±span·ε_c (ALGORITHM.md §8 ``rhat_hist``); values outside the
    range land in the edge bins, so the counts sum to B. No device sync.

    Args:
        log_ratio (`torch.Tensor` of shape `(B,)`): log r or log r̂ (e.g. ``PolicyLossOutput.log_ratio``).
        clip_range (`float`): ε_c.
        bins (`int`, defaults to 41): number of bins.
        span (`float`, defaults to 5.0): half-width of the range in units of ε_c.

    Returns:
        `torch.Tensor` of shape `(bins,)`, int64 counts.
    """
    if not _is_real(clip_range) or not clip_range > 0:
        raise ValueError(f"ratio_histogram: `clip_range` must be > 0, got {clip_range!r}")
    half = span * clip_range
    x = torch.expm1(log_ratio.detach().double()).clamp(-half, half)
    idx = ((x + half) / (2 * half) * bins).floor().long().clamp(0, bins - 1)
    return torch.bincount(idx[~torch.isnan(x)], minlength=bins)


# ----------------------------------------------------------------------------- the loss


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(x.double())


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    """Population std over the non-NaN entries."""
    x = x.double()
    return torch.nanmean((x - torch.nanmean(x)).square()).sqrt()


def _step_stats(logr, logrhat, ratio, adv, clip_range, policy_part, loss, kl, weight, per, d2) -> dict[str, torch.Tensor]:
    st: dict[str, torch.Tensor] = {}
    r_m1 = torch.expm1(logr.double())  # r − 1 without the float32 rounding of r near 1
    st["logr_mean"], st["logr_std"] = _nanmean(logr), _nanstd(logr)
    st["r_mean_minus_1"], st["r_std"] = _nanmean(r_m1), _nanstd(r_m1)
    if logrhat is not None:
        rhat_m1 = torch.expm1(logrhat.double())
        st["logrhat_mean"], st["logrhat_std"] = _nanmean(logrhat), _nanstd(logrhat)
        st["rhat_mean_minus_1"], st["rhat_std"] = _nanmean(rhat_m1), _nanstd(rhat_m1)
    if d2 is not None:
        s = per["std"].double()
        s = torch.where(s > 0, s, math.nan)  # s = 0: no bias defined, skipped
        st["bias"] = _nanmean(d2.double() / (2 * s * s))
        st["drift_rms"] = _nanmean(d2.double()).sqrt()
    high = (ratio > 1 + clip_range).double()
    low = (ratio < 1 - clip_range).double()
    pos, neg = (adv > 0).double(), (adv < 0).double()
    st["clip_high"], st["clip_low"] = high.mean(), low.mean()
    st["pos_adv_clipped"], st["neg_adv_clipped"] = (high * pos).mean(), (low * neg).mean()
    st["grad_zeroed_frac"] = st["pos_adv_clipped"] + st["neg_adv_clipped"]
    st["approx_kl"] = 0.5 * _nanmean(logr.double().square())
    st["adv_pos_frac"], st["adv_abs_mean"] = pos.mean(), _nanmean(adv.abs())
    st["policy_loss"], st["loss"] = _nanmean(policy_part), loss
    if kl is not None:
        st["kl_ref"] = _nanmean(kl)
    if weight is not None:
        st["delta_mean"] = _nanmean(weight)
    if "beta" in per and "dt" in per:
        w = weight.double() if weight is not None else 1.0
        st["eff_weight"] = _nanmean(w * per["beta"].double() * per["dt"].double().abs())
    for name, key in (("dt", "dt_abs"), ("std", "s"), ("std_dev_t", "std_dev_t"), ("beta", "beta")):
        if name in per:
            st[key] = _nanmean(per[name].abs() if name == "dt" else per[name])
    return st

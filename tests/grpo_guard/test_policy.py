"""Policy-loss invariants (ALGORITHM.md §3–§4, §7 I3, I5–I13, I15, §8 statistics)."""

import math

import pytest
import torch

from grpo_guard.policy import (
    PolicyLossOutput,
    kl_to_reference,
    normalized_log_ratio,
    per_sample_bias,
    policy_loss,
    ratio_histogram,
    reweight_delta,
)
from grpo_guard.sde import flow_sigmas, sde_step, step_log_prob

F64 = torch.float64
SIG = flow_sigmas(10, 3.0, dtype=F64)
ETA = {"flow_grpo": 0.7, "dance_grpo": 0.3, "cps": 0.8}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rollout(js, *, dynamics="flow_grpo", shape=(2, 3, 3), drift=1e-2, seed=0, dtype=F64, cps_logprob="gaussian"):
    """One rollout step per sample (sample b at step js[b]) and the training recompute after the policy drifted.

    Returns (old, new, v, x): old/new are SDESteps, v the current velocity leaf (new.mean depends on it), x the latents.
    """
    g = _gen(seed)
    b = len(js)
    x = torch.randn((b, *shape), generator=g, dtype=dtype)
    v_old = torch.randn((b, *shape), generator=g, dtype=dtype)
    t, tn = SIG[js].to(dtype), SIG[[j + 1 for j in js]].to(dtype)
    kw = dict(noise_level=ETA[dynamics], dynamics=dynamics, cps_logprob=cps_logprob)
    old = sde_step(v_old, x, t, tn, generator=g, **kw)
    v = (v_old + drift * torch.randn((b, *shape), generator=g, dtype=dtype)).requires_grad_(True)
    new = sde_step(v, x, t, tn, prev_sample=old.prev_sample, **kw)
    return old, new, v, x


def _guard(old, new, adv, **kw):
    args = dict(clip_range=0.5, ratio_norm=True, grad_reweight=True, mean=new.mean, old_mean=old.mean, std=old.std,
                dt=old.dt, beta=old.beta)
    args.update(kw)
    return policy_loss(new.log_prob, old.log_prob, adv, **args)


# ----------------------------------------------------------------------------- on-policy (I3)


@pytest.mark.parametrize("dynamics", ["flow_grpo", "dance_grpo", "cps"])
def test_on_policy_ratio_is_exactly_one(dynamics):
    """I3: same weights ⇒ log r = log r̂ = 0 exactly (both RatioNorm forms), no clipping, loss = −mean(δ·A)."""
    old, new, _, _ = _rollout([0, 4, 8], dynamics=dynamics, drift=0.0, dtype=torch.float32,
                           cps_logprob="flow_grpo" if dynamics == "cps" else "gaussian")
    form = "neg_mse" if dynamics == "cps" else "gaussian"
    adv = torch.tensor([1.0, -0.5, 2.0])
    for prev in (None, old.prev_sample):
        out = _guard(old, new, adv, clip_range=2e-6, prev_sample=prev, log_prob_form=form)
        assert torch.equal(out.log_ratio, torch.zeros(3)), "on-policy log r̂ must be exactly 0"
        for key in ("logr_mean", "logr_std", "r_mean_minus_1", "logrhat_mean", "rhat_mean_minus_1", "clip_high",
                    "clip_low", "grad_zeroed_frac", "approx_kl", "bias", "drift_rms"):
            assert out.stats[key] == 0.0, key
        torch.testing.assert_close(out.loss, -(out.delta * adv).mean())


# ----------------------------------------------------------------------------- RatioNorm (I5–I8, I14)


@pytest.mark.parametrize(("dynamics", "form"), [("flow_grpo", "gaussian"), ("dance_grpo", "gaussian"),
                                                ("cps", "gaussian"), ("cps", "neg_mse")])
def test_ratio_norm_implemented_form_equals_clean_form(dynamics, form):
    """I5 (and I14 for CPS): s·(Δ log p + bias) == mean_D(ε ⊙ d) to 1e-12 in float64, values and gradients w.r.t. v."""
    old, new, v, _ = _rollout([0, 2, 5, 8], dynamics=dynamics, drift=0.05,
                           cps_logprob="flow_grpo" if form == "neg_mse" else "gaussian")
    implemented = normalized_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, old.std, log_prob_form=form)
    clean = normalized_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, old.std, prev_sample=old.prev_sample)
    eps = (old.prev_sample - old.mean) / old.std
    by_hand = (eps * (new.mean - old.mean)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(implemented, clean, rtol=0, atol=1e-12)
    torch.testing.assert_close(clean, by_hand, rtol=0, atol=1e-15)
    (g_impl,) = torch.autograd.grad(implemented.sum(), v, retain_graph=True)
    (g_clean,) = torch.autograd.grad(clean.sum(), v, retain_graph=True)
    torch.testing.assert_close(g_impl, g_clean, rtol=0, atol=1e-12)
    # The same through the whole loss.
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=F64)
    a = _guard(old, new, adv, log_prob_form=form)
    b = _guard(old, new, adv, prev_sample=old.prev_sample)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-12)
    (ga,) = torch.autograd.grad(a.loss, v, retain_graph=True)
    (gb,) = torch.autograd.grad(b.loss, v)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


def test_ratio_norm_log_ratio_has_no_bias_antithetic():
    """I6: log r̂(ε) + log r̂(−ε) = 0 exactly, while log r(ε) + log r(−ε) = −2·bias."""
    g = _gen(1)
    b, shape = 4, (3, 5, 5)
    s = torch.tensor([0.7, 0.3, 0.05, 0.006], dtype=F64).view(b, 1, 1, 1)
    old_mean = torch.zeros((b, *shape), dtype=F64)  # μ_old = 0 makes ε exactly antithetic in floating point
    mean = 0.02 * torch.randn((b, *shape), generator=g, dtype=F64)
    eps = torch.randn((b, *shape), generator=g, dtype=F64)
    bias = per_sample_bias(mean, old_mean, s)
    logr_sum, logrhat_sum = 0, 0
    for sign in (1, -1):
        xp = old_mean + sign * s * eps
        lp, lp_old = step_log_prob(xp, mean, s), step_log_prob(xp, old_mean, s)
        logrhat_sum = logrhat_sum + normalized_log_ratio(lp, lp_old, mean, old_mean, s, prev_sample=xp)
        logr_sum = logr_sum + (lp - lp_old)
    assert torch.equal(logrhat_sum, torch.zeros(b, dtype=F64)), "log r̂ must be odd in ε"
    torch.testing.assert_close(logr_sum, -2 * bias, rtol=1e-9, atol=1e-12)


def test_ratio_norm_log_ratio_is_centred_monte_carlo():
    """I6: over 10⁴ ε-draws, mean log r̂ is within 4 SE of 0 and mean log r within 4 SE of −mean_D(d²)/(2s²)."""
    n, shape, s = 10_000, (1, 4, 4), 0.2
    g = _gen(2)
    d = 0.05 * torch.randn(shape, generator=g, dtype=F64)
    old_mean = torch.randn(shape, generator=g, dtype=F64).expand(n, *shape[1:])
    mean = old_mean + d
    xp = old_mean + s * torch.randn((n, *shape[1:]), generator=g, dtype=F64)
    lp, lp_old = step_log_prob(xp, mean, s), step_log_prob(xp, old_mean, s)
    logrhat = normalized_log_ratio(lp, lp_old, mean, old_mean, s, prev_sample=xp)
    logr = lp - lp_old
    bias = float((d**2).mean() / (2 * s * s))
    se_hat, se_raw = float(logrhat.std()) / math.sqrt(n), float(logr.std()) / math.sqrt(n)
    assert abs(float(logrhat.mean())) < 4 * se_hat
    assert abs(float(logr.mean()) + bias) < 4 * se_raw
    assert bias > 4 * se_raw, "the test must be able to see the raw ratio's left shift"


@pytest.mark.parametrize("clean", [False, True])
def test_bias_is_per_sample(clean):
    """I7: perturbing μ_θ of sample b leaves every other sample's r̂ and loss bitwise unchanged (bug #244)."""
    old, new, _, _ = _rollout([3, 3, 3, 3, 3], drift=0.02)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0], dtype=F64)
    prev = old.prev_sample if clean else None
    base = _guard(old, new, adv, prev_sample=prev)
    mean2 = new.mean.detach().clone()
    mean2[2] += 0.3
    lp2 = step_log_prob(old.prev_sample, mean2, old.std)
    moved = policy_loss(lp2, old.log_prob, adv, clip_range=0.5, ratio_norm=True, grad_reweight=True, mean=mean2,
                        old_mean=old.mean, std=old.std, dt=old.dt, prev_sample=prev)
    others = [0, 1, 3, 4]
    assert torch.equal(moved.log_ratio[others], base.log_ratio[others].detach())
    assert torch.equal(moved.per_sample[others], base.per_sample[others].detach())
    assert moved.log_ratio[2] != base.log_ratio[2]
    assert per_sample_bias(new.mean, old.mean, old.std).shape == (5,)


def test_gradient_flows_through_the_bias():
    """I8: the implemented form's gradient equals the clean form's; detaching the bias adds −mean_D(d ⊙ ∇μ)/s."""
    old, new, _, _ = _rollout([1, 6], drift=0.05)
    mean = new.mean.detach().clone().requires_grad_(True)
    s = old.std
    lp = step_log_prob(old.prev_sample, mean, s)
    delta_logp = lp - old.log_prob
    attached = (s.flatten() * (delta_logp + per_sample_bias(mean, old.mean, s))).sum()
    detached = (s.flatten() * (delta_logp + per_sample_bias(mean, old.mean, s).detach())).sum()
    clean = normalized_log_ratio(lp, old.log_prob, mean, old.mean, s, prev_sample=old.prev_sample).sum()
    g_att, g_det, g_clean = (torch.autograd.grad(f, mean, retain_graph=True)[0] for f in (attached, detached, clean))
    torch.testing.assert_close(g_att, g_clean, rtol=0, atol=1e-13)
    d, n_dims = mean.detach() - old.mean, mean[0].numel()
    torch.testing.assert_close(g_det - g_clean, -d / (s * n_dims), rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------- gradients (finite differences)


LOSS_MODES = {
    "raw": dict(ratio_norm=False, grad_reweight=False),
    "ratio_norm": dict(ratio_norm=True, grad_reweight=False),
    "ratio_norm_clean": dict(ratio_norm=True, grad_reweight=False, clean=True),
    "guard_inv_dt": dict(ratio_norm=True, grad_reweight=True, delta="inv_dt"),
    "guard_beta_over_dt": dict(ratio_norm=True, grad_reweight=True, delta="beta_over_dt", clean=True),
    "guard_inv_beta_dt": dict(ratio_norm=True, grad_reweight=True, delta="inv_beta_dt"),
    "raw_reweight": dict(ratio_norm=False, grad_reweight=True, delta="inv_dt"),
    "raw_kl": dict(ratio_norm=False, grad_reweight=False, kl_beta=0.04),
    "guard_kl": dict(ratio_norm=True, grad_reweight=True, kl_beta=0.5, clean=True),
}


@pytest.mark.parametrize("dynamics", ["flow_grpo", "dance_grpo"])
@pytest.mark.parametrize("mode", sorted(LOSS_MODES))
def test_policy_loss_gradient_matches_finite_differences(dynamics, mode):
    """gradcheck (float64): ∂loss/∂μ_θ by autograd equals central finite differences, every loss mode."""
    cfg = dict(LOSS_MODES[mode])
    clean = cfg.pop("clean", False)
    old, new, _, _ = _rollout([0, 3, 7], dynamics=dynamics, drift=0.05)
    ref_mean = old.mean + 0.01 * torch.randn(old.mean.shape, generator=_gen(5), dtype=F64)
    adv = torch.tensor([1.5, -0.7, 0.4], dtype=F64)

    def loss_of(mean):
        lp = step_log_prob(old.prev_sample, mean, old.std)
        out = policy_loss(lp, old.log_prob, adv, clip_range=0.3, mean=mean, old_mean=old.mean, std=old.std,
                          dt=old.dt, beta=old.beta, ref_mean=ref_mean, std_dev_t=old.std_dev_t,
                          prev_sample=old.prev_sample if clean else None, compute_stats=False, **cfg)
        return out.loss, out.per_sample

    mean = new.mean.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(loss_of, (mean,), eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------- sign and clipping (I10, I11)


@pytest.mark.parametrize("dynamics", ["flow_grpo", "dance_grpo"])
@pytest.mark.parametrize("ratio_norm", [False, True])
def test_positive_advantage_pulls_toward_the_sample(dynamics, ratio_norm):
    """I10: A > 0, unclipped: one SGD step on v increases log p_θ(x'), and log r̂ becomes > 0."""
    old, new, v, x = _rollout([1, 4, 8], dynamics=dynamics, drift=0.0)
    adv = torch.ones(3, dtype=F64)
    out = _guard(old, new, adv, ratio_norm=ratio_norm, clip_range=1.0)
    (grad,) = torch.autograd.grad(out.loss, v)
    stepped = sde_step(v.detach() - 1e-3 * grad, x, SIG[[1, 4, 8]], SIG[[2, 5, 9]], noise_level=ETA[dynamics],
                       dynamics=dynamics, prev_sample=old.prev_sample)
    assert (stepped.log_prob > old.log_prob).all(), "a positive advantage must increase log p of the sample"
    logrhat = normalized_log_ratio(stepped.log_prob, old.log_prob, stepped.mean, old.mean, old.std,
                                   prev_sample=old.prev_sample)
    assert (logrhat > 0).all()


def test_ppo_clip_zeroes_the_gradient_exactly_in_the_clipped_cases():
    """I11: the gradient is 0 exactly iff (A>0 ∧ r>1+ε) ∨ (A<0 ∧ r<1−ε) ∨ A=0, and −A·r/B otherwise."""
    c = 0.1
    # (A, log r): clipped-high A>0, clipped-low A<0, A=0, inside, A>0 below band, A<0 above band
    adv = torch.tensor([1.0, -1.0, 0.0, 0.8, 2.0, -0.5], dtype=F64)
    logr = torch.tensor([0.3, -0.3, 0.05, 0.02, -0.4, 0.5], dtype=F64)
    lp = logr.clone().requires_grad_(True)
    out = policy_loss(lp, torch.zeros(6, dtype=F64), adv, clip_range=c)
    (grad,) = torch.autograd.grad(out.loss, lp)
    zero = torch.tensor([True, True, True, False, False, False])
    assert torch.equal(grad[zero], torch.zeros(3, dtype=F64)), "clipped samples must get exactly zero gradient"
    torch.testing.assert_close(grad[~zero], (-adv * logr.exp() / 6)[~zero], rtol=1e-14, atol=0)
    st = out.stats
    assert st["pos_adv_clipped"] == pytest.approx(1 / 6) and st["neg_adv_clipped"] == pytest.approx(1 / 6)
    assert st["grad_zeroed_frac"] == pytest.approx(2 / 6)
    assert st["clip_high"] == pytest.approx(2 / 6) and st["clip_low"] == pytest.approx(2 / 6)


def test_ppo_clip_applies_to_the_normalized_ratio_with_ratio_norm():
    """I11 with RatioNorm: samples whose r̂ is clipped get exactly zero gradient w.r.t. μ_θ."""
    old, new, v, _ = _rollout([2, 2, 2, 2], drift=0.5)
    logrhat = _guard(old, new, torch.ones(4, dtype=F64)).log_ratio.detach()
    clip = 0.5 * float(logrhat.abs().min())  # every r̂ sits outside the band 1 ± clip
    adv = torch.where(logrhat > 0, 1.0, -1.0).to(F64)  # and every advantage has the zeroing sign
    out = _guard(old, new, adv, clip_range=clip)
    (grad,) = torch.autograd.grad(out.loss, v)
    assert torch.equal(grad, torch.zeros_like(grad))
    assert out.stats["grad_zeroed_frac"] == 1.0


# ----------------------------------------------------------------------------- reweighting (I9)


def _per_step_gradient_scales(*, ratio_norm, grad_reweight, delta="inv_dt", dynamics="flow_grpo"):
    """g_j = ‖∂(δ_j·log r̂_j)/∂v‖·D/‖ε‖ on-policy, one sample per trained step j = 0..8 in one batch."""
    js = list(range(9))
    old, new, v, _ = _rollout(js, dynamics=dynamics, shape=(4, 8, 8), drift=0.0, seed=3)
    adv = -torch.ones(9, dtype=F64)  # on-policy r̂ = 1 sits inside the band: loss_j = δ_j·r̂_j/B
    out = _guard(old, new, adv, clip_range=0.1, ratio_norm=ratio_norm, grad_reweight=grad_reweight, delta=delta,
                 prev_sample=old.prev_sample)
    (grad,) = torch.autograd.grad(out.loss, v)
    eps = (old.prev_sample - old.mean) / old.std
    n_dims = v[0].numel()
    return torch.stack([(9 * grad[j]).norm() * n_dims / eps[j].norm() for j in js]), old


def test_reweighting_equalises_per_step_gradient_scales():
    """I9: Flow-SDE on §1.1: Guard g_j = β_j (1.000, then 1.245), max/min ≤ 1.25; raw ratio g_j = β√|dt|/σ_t, ≈ 26×."""
    guard, old = _per_step_gradient_scales(ratio_norm=True, grad_reweight=True)
    torch.testing.assert_close(guard, old.beta, rtol=1e-9, atol=0)
    assert float(guard.max() / guard.min()) <= 1.25
    raw, old = _per_step_gradient_scales(ratio_norm=False, grad_reweight=False)
    torch.testing.assert_close(raw, old.beta * old.dt.sqrt() / old.std_dev_t, rtol=1e-9, atol=0)
    spread = float(raw.max() / raw.min())
    assert 25.0 < spread < 27.0, f"raw-ratio per-step gradient spread {spread:.1f}×, §1.1 says ≈ 26×"
    assert [round(float(x), 3) for x in raw[[0, 8]]] == [0.057, 1.487]


def test_dance_exact_equaliser_flattens_gradient_scales():
    """§4.3: on Dance-SDE, δ = 1/(β|dt|) gives g_j = 1 at every step; δ = β/|dt| gives g_j = β_j²."""
    exact, _ = _per_step_gradient_scales(ratio_norm=True, grad_reweight=True, delta="inv_beta_dt", dynamics="dance_grpo")
    torch.testing.assert_close(exact, torch.ones(9, dtype=F64), rtol=1e-9, atol=0)
    paper, old = _per_step_gradient_scales(ratio_norm=True, grad_reweight=True, delta="beta_over_dt",
                                           dynamics="dance_grpo")
    torch.testing.assert_close(paper, old.beta**2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("delta", ["inv_dt", "beta_over_dt", "inv_beta_dt", "none"])
def test_reweighting_multiplies_each_sample_inside_the_batch_mean(delta):
    """§4.3–4.4: per_sample = δ_i·surrogate_i with δ per sample, loss = mean_B; δ uses |dt| whatever dt's sign."""
    old, new, _, _ = _rollout([0, 4, 8], drift=0.02)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    plain = _guard(old, new, adv, grad_reweight=False)
    weighted = _guard(old, new, adv, delta=delta)
    expected = {"inv_dt": 1 / old.dt, "beta_over_dt": old.beta / old.dt, "inv_beta_dt": 1 / (old.beta * old.dt),
                "none": torch.ones(3, dtype=F64)}[delta]
    torch.testing.assert_close(weighted.delta, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(weighted.per_sample, expected * plain.per_sample, rtol=1e-14, atol=0)
    torch.testing.assert_close(weighted.loss, weighted.per_sample.mean(), rtol=1e-15, atol=0)
    signed = reweight_delta(-old.dt, delta=delta, beta=old.beta)
    torch.testing.assert_close(signed, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- KL (I13)


def test_kl_to_reference_is_zero_at_the_reference_and_matches_closed_form():
    """I13: KL = 0 when θ = ref; for known Δv, KL = β²dt²·mean_D(Δv²)/(2σ_t²) = |dt| × the exact per-element KL."""
    old, new, v, _ = _rollout([0, 3, 7], drift=0.0)
    assert torch.equal(kl_to_reference(new.mean, old.mean, old.std_dev_t), torch.zeros(3, dtype=F64))
    g = _gen(4)
    dv = 0.1 * torch.randn(v.shape, generator=g, dtype=F64)
    shifted_mean = new.mean + (new.beta * -new.dt).view(-1, 1, 1, 1) * dv  # μ(v + Δv) − μ(v) = β·dt·Δv
    kl = kl_to_reference(shifted_mean, new.mean, new.std_dev_t)
    closed = new.beta**2 * new.dt**2 * (dv**2).mean(dim=(1, 2, 3)) / (2 * new.std_dev_t**2)
    torch.testing.assert_close(kl, closed, rtol=1e-10, atol=0)
    exact_per_element = ((shifted_mean - new.mean) ** 2 / (2 * new.std**2)).mean(dim=(1, 2, 3))
    torch.testing.assert_close(kl, new.dt * exact_per_element, rtol=1e-10, atol=0)


def test_kl_term_is_added_with_its_weight_and_not_reweighted():
    """§3.3: loss = mean_B(δ·surrogate) + β_KL·mean_B KL; stats report kl_ref."""
    old, new, _, _ = _rollout([1, 5], drift=0.03)
    ref = old.mean + 0.01
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    base = _guard(old, new, adv)
    with_kl = _guard(old, new, adv, kl_beta=0.04, ref_mean=ref, std_dev_t=old.std_dev_t)
    kl = kl_to_reference(new.mean, ref, old.std_dev_t)
    torch.testing.assert_close(with_kl.loss, base.loss + 0.04 * kl.mean(), rtol=1e-14, atol=0)
    assert with_kl.stats["kl_ref"] == pytest.approx(float(kl.detach().mean()), rel=1e-12)
    assert with_kl.stats["policy_loss"] == pytest.approx(float(base.loss.detach()), rel=1e-12)


# ----------------------------------------------------------------------------- per-sample schedule (I15)


@pytest.mark.parametrize("dynamics", ["flow_grpo", "dance_grpo"])
@pytest.mark.parametrize("delta", ["inv_dt", "beta_over_dt"])
def test_mixed_step_batch_gives_each_sample_its_solo_loss(dynamics, delta):
    """I15: samples at different steps (DanceGRPO) get the same loss in the batch as alone."""
    js = [0, 2, 5, 8]
    old, new, _, _ = _rollout(js, dynamics=dynamics, drift=0.02)
    adv = torch.tensor([1.0, -0.3, 0.7, -2.0], dtype=F64)
    for prev in (None, old.prev_sample):
        batch = _guard(old, new, adv, delta=delta, prev_sample=prev, clip_range=0.05)
        for b in range(4):
            sl = slice(b, b + 1)
            alone = policy_loss(new.log_prob[sl], old.log_prob[sl], adv[sl], clip_range=0.05, ratio_norm=True,
                                grad_reweight=True, delta=delta, mean=new.mean[sl], old_mean=old.mean[sl],
                                std=float(old.std[b]), dt=float(old.dt[b]), beta=float(old.beta[b]),
                                prev_sample=None if prev is None else prev[sl])
            torch.testing.assert_close(batch.per_sample[b], alone.loss, rtol=1e-13, atol=1e-16,
                                       msg=f"sample {b} at step {js[b]}")


# ----------------------------------------------------------------------------- statistics (§8)


def test_stats_follow_their_section_8_definitions():
    """§8: every statistic is a float with its documented definition."""
    old, new, _, _ = _rollout([2, 2, 6, 6, 8], drift=0.05)
    adv = torch.tensor([1.0, -1.0, 0.0, 3.0, -0.2], dtype=F64)
    ref = old.mean * 0.99
    eps = (old.prev_sample - old.mean) / old.std
    d = (new.mean - old.mean).detach()
    logrhat = (eps * d).mean(dim=(1, 2, 3))
    rhat = logrhat.exp()
    mags = rhat.sub(1).abs().sort().values
    c = float(mags[1] + mags[2]) / 2  # some samples clipped, some not
    out = _guard(old, new, adv, clip_range=c, ref_mean=ref, std_dev_t=old.std_dev_t, prev_sample=old.prev_sample)
    st = out.stats
    assert isinstance(out, PolicyLossOutput) and all(type(v) is float for v in st.values())
    assert set(st) == {
        "logr_mean", "logr_std", "r_mean_minus_1", "r_std", "logrhat_mean", "logrhat_std", "rhat_mean_minus_1",
        "rhat_std", "bias", "drift_rms", "clip_high", "clip_low", "pos_adv_clipped", "neg_adv_clipped",
        "grad_zeroed_frac", "approx_kl", "adv_pos_frac", "adv_abs_mean", "policy_loss", "loss", "kl_ref",
        "delta_mean", "eff_weight", "dt_abs", "s", "std_dev_t", "beta"}
    logr = (new.log_prob - old.log_prob).detach()
    approx = pytest.approx
    assert st["logr_mean"] == approx(float(logr.mean()), rel=1e-12)
    assert st["logr_std"] == approx(float(logr.std(correction=0)), rel=1e-12)
    assert st["r_mean_minus_1"] == approx(float(logr.exp().mean() - 1), rel=1e-9)
    assert st["r_std"] == approx(float(logr.exp().std(correction=0)), rel=1e-9)
    assert st["logrhat_mean"] == approx(float(logrhat.mean()), rel=1e-12)
    assert st["rhat_mean_minus_1"] == approx(float(rhat.mean() - 1), rel=1e-9)
    assert st["bias"] == approx(float(((d**2).mean(dim=(1, 2, 3)) / (2 * old.std.flatten() ** 2)).mean()), rel=1e-12)
    assert st["drift_rms"] == approx(float((d**2).mean().sqrt()), rel=1e-12)
    assert st["clip_high"] == approx(float((rhat > 1 + c).double().mean()))
    assert st["clip_low"] == approx(float((rhat < 1 - c).double().mean()))
    assert st["pos_adv_clipped"] == approx(float(((rhat > 1 + c) & (adv > 0)).double().mean()))
    assert st["neg_adv_clipped"] == approx(float(((rhat < 1 - c) & (adv < 0)).double().mean()))
    assert st["approx_kl"] == approx(float(0.5 * (logr**2).mean()), rel=1e-12)
    assert st["adv_pos_frac"] == 0.4 and st["adv_abs_mean"] == approx(1.04)
    assert st["delta_mean"] == approx(float((1 / old.dt).mean()), rel=1e-12)
    assert st["eff_weight"] == approx(float(old.beta.mean()), rel=1e-12)
    assert st["dt_abs"] == approx(float(old.dt.mean()), rel=1e-12)
    assert st["kl_ref"] == approx(float(kl_to_reference(new.mean.detach(), ref, old.std_dev_t).mean()), rel=1e-12)
    assert st["loss"] == approx(float(out.loss.detach()), rel=1e-12)
    assert 0 < st["clip_high"] + st["clip_low"] < 1, "fixture: some but not all samples clipped"


def test_raw_mode_also_reports_normalized_ratio_and_skips_nan():
    """§8: with means given, raw mode reports r̂ too; samples with s = 0 are skipped (NaN-skipping means)."""
    old, new, _, _ = _rollout([3, 3], drift=0.05)
    std = old.std.flatten().clone()
    std[1] = 0.0
    out = policy_loss(new.log_prob, old.log_prob, torch.ones(2, dtype=F64), clip_range=0.1, mean=new.mean,
                      old_mean=old.mean, std=std, prev_sample=old.prev_sample)
    eps0 = (old.prev_sample[0] - old.mean[0]) / std[0]
    expected = float((eps0 * (new.mean[0] - old.mean[0])).mean().detach())
    assert out.stats["logrhat_mean"] == pytest.approx(expected, rel=1e-12)
    assert out.stats["logrhat_std"] == 0.0
    d0 = (new.mean[0] - old.mean[0]).detach()
    assert out.stats["bias"] == pytest.approx(float((d0**2).mean() / (2 * std[0] ** 2)), rel=1e-12)


def test_compute_stats_false_returns_no_stats():
    """compute_stats=False skips every statistic (loss unchanged)."""
    old, new, _, _ = _rollout([0, 1], drift=0.05)
    adv = torch.ones(2, dtype=F64)
    a = _guard(old, new, adv, compute_stats=False)
    b = _guard(old, new, adv)
    assert a.stats == {} and torch.equal(a.loss, b.loss)


def test_ratio_histogram_counts_every_sample():
    """§8 rhat_hist: fixed bins over ±5ε_c; out-of-range values land in the edge bins."""
    logr = torch.tensor([0.0, 0.0, 1e-3, -1e-3, 2e-5])
    hist = ratio_histogram(logr, 1e-5, bins=41)
    assert hist.shape == (41,) and int(hist.sum()) == 5
    assert int(hist[20]) == 2 and int(hist[0]) == 1 and int(hist[40]) == 1


# ----------------------------------------------------------------------------- bad arguments


def _bad_call(**over):
    old, new, _, _ = _rollout([1, 2], drift=0.01)
    kw = dict(log_prob=new.log_prob, old_log_prob=old.log_prob, advantages=torch.ones(2, dtype=F64), clip_range=1e-3,
              mean=new.mean, old_mean=old.mean, std=old.std, dt=old.dt, beta=old.beta)
    kw.update(over)
    kw = {k: v for k, v in kw.items() if v is not _DROP}
    return policy_loss(kw.pop("log_prob"), kw.pop("old_log_prob"), kw.pop("advantages"), **kw)


_DROP = object()
NAN2 = torch.tensor([math.nan, 0.0], dtype=F64)


@pytest.mark.parametrize(("over", "name"), [
    (dict(ratio_norm=True, mean=_DROP), "mean"),
    (dict(ratio_norm=True, old_mean=_DROP), "old_mean"),
    (dict(ratio_norm=True, std=_DROP), "std"),
    (dict(grad_reweight=True, dt=_DROP), "dt"),
    (dict(grad_reweight=True, delta="beta_over_dt", beta=_DROP), "beta"),
    (dict(grad_reweight=True, delta="1/dt"), "delta"),
    (dict(log_prob_form="sum"), "log_prob_form"),
    (dict(clip_range=0.0), "clip_range"),
    (dict(clip_range=-1e-4), "clip_range"),
    (dict(clip_range=math.nan), "clip_range"),
    (dict(kl_beta=0.1), "ref_mean"),
    (dict(kl_beta=-0.1), "kl_beta"),
    (dict(adv_clip=0.0), "adv_clip"),
    (dict(old_log_prob=torch.zeros(3, dtype=F64)), "old_log_prob"),
    (dict(advantages=torch.zeros(2, 1, dtype=F64)), "advantages"),
    (dict(old_mean=torch.zeros(2, 2, 3, 4, dtype=F64)), "old_mean"),
    (dict(prev_sample=torch.zeros(2, 2, 3, 4, dtype=F64)), "prev_sample"),
    (dict(std=torch.ones(2, 2, 3, 3, dtype=F64)), "std"),
    (dict(dt=torch.ones(3, dtype=F64)), "dt"),
    (dict(log_prob=NAN2), "log_prob"),
    (dict(advantages=torch.tensor([math.inf, 1.0], dtype=F64)), "advantages"),
    (dict(old_mean=torch.full((2, 2, 3, 3), math.nan, dtype=F64)), "old_mean"),
    (dict(ratio_norm=True, std=torch.tensor([0.5, 0.0], dtype=F64)), "std"),
    (dict(grad_reweight=True, dt=torch.tensor([0.1, 0.0], dtype=F64)), "dt"),
    (dict(grad_reweight=True, delta="inv_beta_dt", beta=torch.tensor([1.0, -1.0], dtype=F64)), "beta"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(over, name):
    """Bad input: a ValueError whose message names the offending argument."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        _bad_call(**over)


def test_overflowing_latents_are_reported_not_propagated():
    """Finite but absurd latents that overflow (μ_θ − μ_old)² raise a ValueError naming the inputs."""
    with pytest.raises(ValueError, match="overflowed: `mean` or `old_mean`"):
        _bad_call(old_mean=torch.full((2, 2, 3, 3), 1e200, dtype=F64))


def test_validate_false_skips_value_checks():
    """validate=False skips the data-dependent checks: NaN propagates instead of raising."""
    out = _bad_call(log_prob=NAN2, validate=False, compute_stats=False)
    assert torch.isnan(out.loss)

"""An independent float64 re-implementation of the engine's math, written from ALGORITHM.md alone.

Nothing below calls a grpo_guard helper: plain ``math`` and numpy, one sample at a time, with each
formula transcribed in the document's own arrangement (§1.1 sigmas, §2.1–2.3 steps, §3.1 advantages,
§3.2 PPO surrogate, §3.3 KL, §4.2 RatioNorm in its clean form, §4.3 δ). Gradients are derived by hand
from the same formulas (chain rule through μ, with ∂μ/∂v read off each sampler's mean) and the
hand-derived gradients are themselves checked against central finite differences of the reference
loss. The engine (``sde_step``, ``policy_loss``, ``group_advantages``) must agree to atol 1e-10.
"""

import math
import statistics

import numpy as np
import pytest
import torch

from grpo_guard.policy import group_advantages, policy_loss
from grpo_guard.sde import flow_sigmas, sde_step

ATOL = 1e-10
SHAPE = (2, 3, 3)  # one sample's latent; D = 18
STEPS = [0, 1, 3, 5, 7, 8]  # one denoising step per sample: a DanceGRPO-style mixed batch
ADV = [1.2, -0.8, 0.0, 2.5, -3.0, 7.0]  # includes A = 0 and one value beyond the ±5 clamp
DRIFT = [0.0, 1e-3, 1e-2, 3e-2, 5e-2, 1e-1]  # how far each sample's policy moved since the rollout
ETA = {"flow_grpo": 0.7, "dance_grpo": 0.3, "cps": 0.8}


# ----------------------------------------------------------------------------- reference: §1.1, §2


def ref_sigmas(num_steps, shift):
    """§1.1: σ_raw = linspace(1, σ_min, T), σ_min = shift(0.001); shift(σ) = shift·σ/(1 + (shift − 1)σ); append 0."""
    def sh(s):
        return shift * s / (1 + (shift - 1) * s)
    s_min = sh(1 / 1000)
    raw = [1.0 + (s_min - 1.0) * k / (num_steps - 1) for k in range(num_steps)] if num_steps > 1 else [1.0]
    return [sh(s) for s in raw] + [0.0]


def ref_step(dynamics, x, v, t, t_next, eta, x_next, cps_logprob="gaussian"):
    """One transition for one sample (§2.1–2.3), the formulas exactly as printed."""
    dt = t_next - t  # signed, negative
    if dynamics in ("flow_grpo", "dance_grpo"):
        if dynamics == "flow_grpo":
            # σ_t = η·√(t/(1 − t)); at t = 1 the denominator uses σ_1, which is this step's σ_next (step 0).
            t_den = t_next if t == 1.0 else t
            sig_t = eta * math.sqrt(t / (1 - t_den))
        else:
            sig_t = eta
        mu = x + (v + (sig_t**2 / (2 * t)) * (x + (1 - t) * v)) * dt
        dmu_dv = (1 + (sig_t**2 / (2 * t)) * (1 - t)) * dt
        s = sig_t * math.sqrt(abs(dt))
        gaussian = True
    else:  # cps
        s = t_next * math.sin(eta * math.pi / 2)
        x0_hat, x1_hat = x - t * v, x + (1 - t) * v
        c = math.sqrt(t_next**2 - s**2)
        mu = (1 - t_next) * x0_hat + c * x1_hat
        dmu_dv = (1 - t_next) * (-t) + c * (1 - t)
        sig_t = s
        gaussian = cps_logprob == "gaussian"
    if gaussian:
        log_prob = float(np.mean(-((x_next - mu) ** 2) / (2 * s * s))) - math.log(s) - 0.5 * math.log(2 * math.pi)
        dlogp_dmu = (x_next - mu) / (s * s) / mu.size
    else:
        log_prob = -float(np.mean((x_next - mu) ** 2))
        dlogp_dmu = 2 * (x_next - mu) / mu.size
    return dict(mu=mu, s=s, sig_t=sig_t, beta=dmu_dv / dt, dt_abs=abs(dt), log_prob=log_prob,
                dlogp_dmu=dlogp_dmu, dmu_dv=dmu_dv)


# ----------------------------------------------------------------------------- reference: §3–§4


def ref_loss(data, v_new, mode, clip_range):
    """mean_B[δ·max(−A·r, −A·clip(r)) + β_KL·KL] and its hand-derived gradient w.r.t. v (§3.2, §3.3, §4.2–4.4)."""
    n = len(data["x"])
    total, grads, per_sample = 0.0, [], []
    for i in range(n):
        t, t_next = data["t"][i], data["t_next"][i]
        kw = dict(dynamics=data["dynamics"], t=t, t_next=t_next, eta=data["eta"], x_next=data["x_next"][i],
                  cps_logprob=data["cps_logprob"])
        old = ref_step(x=data["x"][i], v=data["v_old"][i], **kw)
        new = ref_step(x=data["x"][i], v=v_new[i], **kw)
        size = new["mu"].size
        if mode["ratio_norm"]:  # §4.2 clean form: log r̂ = mean_D[ε ⊙ (μ_θ − μ_old)], ε = (x' − μ_old)/s
            eps = (data["x_next"][i] - old["mu"]) / old["s"]
            logr = float(np.mean(eps * (new["mu"] - old["mu"])))
            dlogr_dmu = eps / size
        else:  # §3.2: Δ = log p_θ − log p_old
            logr = new["log_prob"] - old["log_prob"]
            dlogr_dmu = new["dlogp_dmu"]
        r = math.exp(logr)
        a = min(max(ADV[i], -5.0), 5.0)
        surrogate = max(-a * r, -a * min(max(r, 1 - clip_range), 1 + clip_range))
        zero_grad = (a > 0 and r > 1 + clip_range) or (a < 0 and r < 1 - clip_range) or a == 0
        d_surrogate_dlogr = 0.0 if zero_grad else -a * r
        delta = {None: 1.0, "inv_dt": 1 / old["dt_abs"], "beta_over_dt": old["beta"] / old["dt_abs"],
                 "inv_beta_dt": 1 / (old["beta"] * old["dt_abs"])}[mode.get("delta")]
        loss_i = delta * surrogate
        dloss_dmu = delta * d_surrogate_dlogr * dlogr_dmu
        if mode.get("kl_beta"):  # §3.3: mean_D (μ_θ − μ_ref)²/(2σ_t²)
            diff = new["mu"] - data["ref_mu"][i]
            loss_i += mode["kl_beta"] * float(np.mean(diff**2)) / (2 * old["sig_t"] ** 2)
            dloss_dmu = dloss_dmu + mode["kl_beta"] * diff / (size * old["sig_t"] ** 2)
        per_sample.append(loss_i)
        total += loss_i / n
        grads.append(dloss_dmu * new["dmu_dv"] / n)
    return total, np.stack(grads), per_sample


def make_data(dynamics, cps_logprob, seed=0):
    rng = np.random.default_rng(seed)
    sig = ref_sigmas(10, 3.0)
    n = len(STEPS)
    data = dict(dynamics=dynamics, cps_logprob=cps_logprob, eta=ETA[dynamics],
                t=[sig[j] for j in STEPS], t_next=[sig[j + 1] for j in STEPS],
                x=rng.standard_normal((n, *SHAPE)), v_old=rng.standard_normal((n, *SHAPE)))
    x_next, ref_mu = [], []
    for i in range(n):
        old = ref_step(dynamics, data["x"][i], data["v_old"][i], data["t"][i], data["t_next"][i], data["eta"],
                       np.zeros(SHAPE), cps_logprob)
        x_next.append(old["mu"] + old["s"] * rng.standard_normal(SHAPE))  # x' = μ + s·ξ
        ref_mu.append(old["mu"] + 0.02 * rng.standard_normal(SHAPE))
    data["x_next"], data["ref_mu"] = np.stack(x_next), np.stack(ref_mu)
    data["v_new"] = data["v_old"] + np.array(DRIFT).reshape(n, 1, 1, 1) * rng.standard_normal((n, *SHAPE))
    return data


def engine_loss(data, mode, clip_range, *, clean):
    """The engine's value and autograd gradient on the same data."""
    tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    x, x_next = tensor(data["x"]), tensor(data["x_next"])
    t, t_next = tensor(data["t"]), tensor(data["t_next"])
    kw = dict(noise_level=data["eta"], dynamics=data["dynamics"], cps_logprob=data["cps_logprob"], prev_sample=x_next)
    old = sde_step(tensor(data["v_old"]), x, t, t_next, **kw)
    v = tensor(data["v_new"]).requires_grad_(True)
    new = sde_step(v, x, t, t_next, **kw)
    form = "neg_mse" if data["dynamics"] == "cps" and data["cps_logprob"] == "flow_grpo" else "gaussian"
    out = policy_loss(new.log_prob, old.log_prob, tensor(ADV), clip_range=clip_range, ratio_norm=mode["ratio_norm"],
                      grad_reweight=mode.get("delta") is not None, delta=mode.get("delta") or "inv_dt",
                      mean=new.mean, old_mean=old.mean, std=old.std, dt=old.dt, beta=old.beta,
                      prev_sample=x_next if clean else None, kl_beta=mode.get("kl_beta", 0.0),
                      ref_mean=tensor(data["ref_mu"]), std_dev_t=old.std_dev_t, log_prob_form=form)
    (grad,) = torch.autograd.grad(out.loss, v)
    return out, grad.numpy()


def clip_between_samples(data, mode):
    """A clip range half-way between two samples' |r − 1|, so some samples are clipped and none sits on a kink."""
    mags = []
    for i in range(len(STEPS)):
        kw = dict(dynamics=data["dynamics"], t=data["t"][i], t_next=data["t_next"][i], eta=data["eta"],
                  x_next=data["x_next"][i], cps_logprob=data["cps_logprob"])
        old = ref_step(x=data["x"][i], v=data["v_old"][i], **kw)
        new = ref_step(x=data["x"][i], v=data["v_new"][i], **kw)
        if mode["ratio_norm"]:
            logr = float(np.mean((data["x_next"][i] - old["mu"]) / old["s"] * (new["mu"] - old["mu"])))
        else:
            logr = new["log_prob"] - old["log_prob"]
        mags.append(abs(math.expm1(logr)))
    mags.sort()
    return (mags[2] + mags[3]) / 2


# ----------------------------------------------------------------------------- tests

SAMPLERS = [("flow_grpo", "gaussian"), ("dance_grpo", "gaussian"), ("cps", "gaussian"), ("cps", "flow_grpo")]
MODES = {
    "raw": dict(ratio_norm=False),
    "raw_kl": dict(ratio_norm=False, kl_beta=0.04),
    "ratio_norm": dict(ratio_norm=True),
    "guard_inv_dt": dict(ratio_norm=True, delta="inv_dt"),
    "guard_beta_over_dt": dict(ratio_norm=True, delta="beta_over_dt"),
    "guard_inv_beta_dt": dict(ratio_norm=True, delta="inv_beta_dt"),
    "guard_inv_dt_kl": dict(ratio_norm=True, delta="inv_dt", kl_beta=0.1),
}


def test_sigma_table_matches_reference_formula():
    """§1.1: the engine's table equals the formula (to float32 rounding, which diffusers applies)."""
    for num_steps, shift in [(10, 3.0), (40, 3.0), (16, 1.0), (1, 2.0)]:
        ours = flow_sigmas(num_steps, shift, dtype=torch.float64).numpy()
        np.testing.assert_allclose(ours, ref_sigmas(num_steps, shift), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("dynamics", "cps_logprob"), SAMPLERS)
def test_sde_step_matches_reference(dynamics, cps_logprob):
    """I1/I14: sde_step's μ, s, σ_t, β, |dt| and log-prob equal the §2 formulas, per sample (incl. t = 1)."""
    data = make_data(dynamics, cps_logprob)
    t = torch.tensor(data["t"], dtype=torch.float64)
    t_next = torch.tensor(data["t_next"], dtype=torch.float64)
    step = sde_step(torch.from_numpy(data["v_old"]), torch.from_numpy(data["x"]), t, t_next,
                    noise_level=data["eta"], dynamics=dynamics, cps_logprob=cps_logprob,
                    prev_sample=torch.from_numpy(data["x_next"]))
    for i in range(len(STEPS)):
        ref = ref_step(dynamics, data["x"][i], data["v_old"][i], data["t"][i], data["t_next"][i], data["eta"],
                       data["x_next"][i], cps_logprob)
        np.testing.assert_allclose(step.mean[i].numpy(), ref["mu"], rtol=0, atol=ATOL)
        for name, key in (("std", "s"), ("std_dev_t", "sig_t"), ("beta", "beta"), ("dt", "dt_abs"),
                          ("log_prob", "log_prob")):
            assert abs(float(getattr(step, name).flatten()[i]) - ref[key]) <= ATOL, f"sample {i}: {name}"


@pytest.mark.parametrize(("dynamics", "cps_logprob"), SAMPLERS)
@pytest.mark.parametrize("mode_name", sorted(MODES))
def test_policy_loss_matches_reference_values_and_gradients(dynamics, cps_logprob, mode_name):
    """I5/I8/I11/I13: loss, per-sample loss and ∂loss/∂v equal the hand-derived reference (both RatioNorm forms)."""
    mode = MODES[mode_name]
    data = make_data(dynamics, cps_logprob, seed=1)
    clip_range = clip_between_samples(data, mode)
    ref_value, ref_grad, ref_per_sample = ref_loss(data, data["v_new"], mode, clip_range)
    for clean in ((False, True) if mode["ratio_norm"] else (False,)):
        out, grad = engine_loss(data, mode, clip_range, clean=clean)
        assert abs(float(out.loss.detach()) - ref_value) <= ATOL, f"loss (clean={clean})"
        np.testing.assert_allclose(out.per_sample.detach().numpy(), ref_per_sample, rtol=0, atol=ATOL)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=ATOL)
    assert 0 < out.stats["clip_high"] + out.stats["clip_low"] < 1, "fixture: some samples clipped, some not"


@pytest.mark.parametrize(("dynamics", "cps_logprob"), [("flow_grpo", "gaussian"), ("cps", "flow_grpo")])
@pytest.mark.parametrize("mode_name", ["raw_kl", "guard_inv_dt_kl", "guard_inv_beta_dt"])
def test_reference_gradient_matches_its_own_finite_differences(dynamics, cps_logprob, mode_name):
    """The reference's hand-derived gradient agrees with central differences of the reference loss."""
    mode = MODES[mode_name]
    data = make_data(dynamics, cps_logprob, seed=2)
    clip_range = clip_between_samples(data, mode)
    _, grad, _ = ref_loss(data, data["v_new"], mode, clip_range)
    rng = np.random.default_rng(0)
    h = 1e-6
    for flat in rng.choice(grad.size, size=12, replace=False):
        idx = np.unravel_index(flat, grad.shape)
        plus, minus = data["v_new"].copy(), data["v_new"].copy()
        plus[idx] += h
        minus[idx] -= h
        fd = (ref_loss(data, plus, mode, clip_range)[0] - ref_loss(data, minus, mode, clip_range)[0]) / (2 * h)
        assert abs(fd - grad[idx]) <= 1e-7 + 1e-6 * abs(grad[idx]), f"element {idx}: fd {fd} vs {grad[idx]}"


@pytest.mark.parametrize("std_scope", ["global", "group"])
def test_group_advantages_match_reference(std_scope):
    """I12: (R − group mean)/(population std + 1e-4), zero-variance groups 0, clamp ±5, by explicit loops."""
    rng = np.random.default_rng(3)
    rewards = list(rng.standard_normal(20))
    groups = [i // 5 for i in range(20)]
    rewards[10:15] = [0.3] * 5  # a zero-variance group
    rewards[15] = 40.0  # an outlier that the clamp catches
    expected = []
    for i, r in enumerate(rewards):
        members = [rewards[k] for k in range(20) if groups[k] == groups[i]]
        if max(members) == min(members):
            expected.append(0.0)
            continue
        std = statistics.pstdev(rewards) if std_scope == "global" else statistics.pstdev(members)
        expected.append(min(max((r - statistics.fmean(members)) / (std + 1e-4), -5.0), 5.0))
    ours = group_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups), std_scope=std_scope)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=ATOL)

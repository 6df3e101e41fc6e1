"""SDE sampler invariants (ALGORITHM.md §1.1, §2, §7 I1–I4, I14, I15)."""

import math

import pytest
import torch

from grpo_guard.sde import SDEStep, flow_sigmas, sde_step, step_constants, step_log_prob

F64 = torch.float64
SHAPE = (3, 4, 6, 6)
SDE_DYNAMICS = ["flow_grpo", "dance_grpo", "cps"]
ETA = {"flow_grpo": 0.7, "dance_grpo": 0.3, "cps": 0.8}


def _xv(shape=SHAPE, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


def _sigmas(dtype=F64):
    return flow_sigmas(10, 3.0, dtype=dtype)


# ----------------------------------------------------------------------------- §1.1 table


def test_flow_sigmas_match_diffusers_scheduler():
    """§1.1: the table is FlowMatchEulerDiscreteScheduler's (static shift), bit for bit in float32."""
    FlowMatchEulerDiscreteScheduler = pytest.importorskip("diffusers").FlowMatchEulerDiscreteScheduler

    for num_steps, shift in [(10, 3.0), (40, 3.0), (16, 1.0), (28, 5.0), (1, 3.0)]:
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(num_steps)
        ours = flow_sigmas(num_steps, shift)
        assert ours.dtype == torch.float32 and ours.shape == (num_steps + 1,)
        assert torch.equal(ours, sched.sigmas), f"T={num_steps} shift={shift}: table differs from diffusers"


# j, σ_j, |dt|, σ_t, s, β, δ = 1/|dt|, raw grad scale β√|dt|/σ_t, Guard scale δ·β·|dt|  (ALGORITHM.md §1.1)
TABLE_1_1 = [
    (0, "1.000", "0.040", "3.51", "0.700", "1.000", "25.1", "0.057", "1.000"),
    (1, "0.960", "0.047", "3.44", "0.743", "1.245", "21.4", "0.078", "1.245"),
    (2, "0.913", "0.056", "2.27", "0.536", "1.245", "18.0", "0.129", "1.245"),
    (3, "0.858", "0.067", "1.72", "0.446", "1.245", "14.9", "0.188", "1.245"),
    (4, "0.790", "0.083", "1.36", "0.392", "1.245", "12.0", "0.264", "1.245"),
    (5, "0.707", "0.105", "1.09", "0.353", "1.245", "9.5", "0.371", "1.245"),
    (6, "0.602", "0.137", "0.86", "0.319", "1.245", "7.3", "0.536", "1.245"),
    (7, "0.465", "0.187", "0.65", "0.282", "1.245", "5.4", "0.825", "1.245"),
    (8, "0.278", "0.269", "0.43", "0.225", "1.245", "3.7", "1.487", "1.245"),
    (9, "0.009", "0.009", "0.07", "0.006", "1.245", "112", "1.77", "1.245"),
]


def _matches_printed(value: float, printed: str) -> bool:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(value - float(printed)) <= 0.5 * 10 ** (-decimals) + 1e-12


def test_schedule_reproduces_section_1_1_table():
    """I4: SD3.5-M, T = 10, shift 3, η = 0.7 reproduces every column of §1.1 to its printed digits."""
    sig = _sigmas()
    k = step_constants(sig[:-1], sig[1:], noise_level=0.7, dynamics="flow_grpo")
    delta = 1 / k.dt
    computed = [sig[:-1], k.dt, k.std_dev_t, k.std, k.beta, delta, k.beta * k.dt.sqrt() / k.std_dev_t,
                delta * k.beta * k.dt]
    names = ["sigma", "|dt|", "std_dev_t", "s", "beta", "delta", "raw grad scale", "guard grad scale"]
    for row in TABLE_1_1:
        j = row[0]
        for name, col, printed in zip(names, computed, row[1:], strict=True):
            assert _matches_printed(float(col[j]), printed), f"step {j} {name}: {float(col[j]):.5f} vs table {printed}"


def test_sigma_one_substitution_keeps_std_dev_t_finite():
    """I4: at t = 1, σ_1 (= sigma_next of step 0) replaces t in the denominator; β = 1 there, 1 + η²/2 elsewhere; δ > 0."""
    sig = _sigmas()
    k = step_constants(sig[:-1], sig[1:], noise_level=0.7)
    assert torch.isfinite(k.std_dev_t).all() and torch.isfinite(k.std).all()
    assert float(k.std_dev_t[0]) == pytest.approx(0.7 * math.sqrt(1 / (1 - float(sig[1]))), rel=1e-14)
    assert float(k.beta[0]) == 1.0
    torch.testing.assert_close(k.beta[1:], torch.full((9,), 1 + 0.7**2 / 2, dtype=F64), rtol=1e-13, atol=0)
    assert (1 / k.dt > 0).all()


def test_dance_beta_is_not_constant_and_grows_at_low_t():
    """§2.2: Dance-SDE β_t = 1 + η²(1 − t)/(2t) is 1 at t = 1 and grows as t → 0."""
    sig = _sigmas()
    k = step_constants(sig[:-1], sig[1:], noise_level=0.3, dynamics="dance_grpo")
    t = sig[:-1]
    torch.testing.assert_close(k.beta, 1 + 0.09 * (1 - t) / (2 * t), rtol=1e-14, atol=0)
    torch.testing.assert_close(k.std, 0.3 * k.dt.sqrt(), rtol=1e-14, atol=0)
    assert float(k.beta[0]) == 1.0 and bool((k.beta[1:] > k.beta[:-1]).all())


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("dynamics", SDE_DYNAMICS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_log_prob_matches_torch_normal(dynamics, dtype):
    """I1: log p = Normal(μ, s).log_prob(x').mean over C, H, W, shape (B,), for any x' and per-sample sigmas."""
    x, v = _xv(dtype=dtype)
    sig = _sigmas(dtype)
    t, tn = sig[[0, 4, 7]], sig[[1, 5, 8]]
    off_policy = x + torch.randn_like(x)  # any x', not just a draw
    step = sde_step(v, x, t, tn, noise_level=ETA[dynamics], dynamics=dynamics, prev_sample=off_policy,
                    cps_logprob="gaussian")
    expected = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean)).log_prob(off_policy).mean(dim=(1, 2, 3))
    assert step.log_prob.shape == (3,) and step.log_prob.dtype == dtype
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(step.log_prob, expected, rtol=tol, atol=tol)


def test_cps_flow_grpo_log_prob_is_unscaled_negative_mse():
    """§2.3: cps_logprob='flow_grpo' is −mean_D (x' − μ)², every constant dropped."""
    x, v = _xv()
    sig = _sigmas()
    xp = x + 0.3 * torch.randn_like(x)
    step = sde_step(v, x, float(sig[2]), float(sig[3]), noise_level=0.8, dynamics="cps", prev_sample=xp)
    torch.testing.assert_close(step.log_prob, -((xp - step.mean) ** 2).mean(dim=(1, 2, 3)), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dynamics", SDE_DYNAMICS)
def test_bf16_inputs_give_float32_step_math(dynamics):
    """I1 / §1 rule 1: bf16 velocity and latents are upcast; the step equals the float32 step on the upcast inputs."""
    x, v = _xv(dtype=torch.bfloat16)
    sig = _sigmas(torch.float32)
    gen = torch.Generator().manual_seed(3)
    low = sde_step(v, x, float(sig[1]), float(sig[2]), noise_level=ETA[dynamics], dynamics=dynamics, generator=gen)
    gen = torch.Generator().manual_seed(3)
    ref = sde_step(v.float(), x.float(), float(sig[1]), float(sig[2]), noise_level=ETA[dynamics], dynamics=dynamics,
                   generator=gen)
    for name in ("prev_sample", "mean", "std", "log_prob", "std_dev_t", "beta", "dt"):
        a, b = getattr(low, name), getattr(ref, name)
        assert a.dtype == torch.float32, f"{name} is {a.dtype}, step math must be float32"
        assert torch.equal(a, b), f"{name} differs from the float32 computation"


def test_float64_inputs_stay_float64():
    """Float64 inputs keep float64 step math (the reference tests rely on it)."""
    x, v = _xv()
    step = sde_step(v, x, 0.5, 0.4)
    assert all(getattr(step, n).dtype == F64 for n in ("prev_sample", "mean", "std", "log_prob", "beta", "dt"))


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(("dynamics", "cps_logprob"),
                         [("flow_grpo", "flow_grpo"), ("dance_grpo", "flow_grpo"), ("cps", "flow_grpo"),
                          ("cps", "gaussian"), ("ode", "flow_grpo")])
@pytest.mark.parametrize("j", [0, 5, 9])
def test_on_policy_recompute_is_bitwise_equal(dynamics, cps_logprob, j):
    """I3: recomputing with prev_sample and the same velocity gives the sampling log-prob and mean bit for bit."""
    x, v = _xv(dtype=torch.float32)
    sig = _sigmas(torch.float32)
    kw = dict(noise_level=ETA.get(dynamics, 0.7), dynamics=dynamics, cps_logprob=cps_logprob)
    rollout = sde_step(v, x, sig[j], sig[j + 1], generator=torch.Generator().manual_seed(j), **kw)
    train = sde_step(v.clone().requires_grad_(), x, sig[j], sig[j + 1], prev_sample=rollout.prev_sample, **kw)
    assert torch.equal(train.log_prob, rollout.log_prob), "on-policy log-ratio is not exactly 0"
    assert torch.equal(train.mean, rollout.mean) and torch.equal(train.prev_sample, rollout.prev_sample)


def test_draws_follow_the_transition_gaussian():
    """§2.1: without prev_sample, x' ~ N(μ, s²) per sample (moments and a coverage check, fixed seed)."""
    shape = (2, 16, 128, 128)  # n = 262,144 per sample: a 1 % error in s is > 4 SE
    x, v = _xv(shape=shape, dtype=torch.float32, seed=1)
    sig = _sigmas(torch.float32)
    t, tn = sig[[0, 6]], sig[[1, 7]]  # two samples, two very different s
    step = sde_step(v, x, t, tn, generator=torch.Generator().manual_seed(123))
    z = ((step.prev_sample - step.mean) / step.std).double().flatten(1)
    n = z.shape[1]
    for b in range(2):
        zb = z[b]
        assert abs(float(zb.mean())) < 4 / math.sqrt(n), f"sample {b}: noise mean off"
        assert abs(float(zb.var()) - 1) < 4 * math.sqrt(2 / n), f"sample {b}: noise variance off (std not s)"
        p1 = float((zb.abs() < 1).double().mean())
        assert abs(p1 - 0.682689) < 4 * math.sqrt(0.682689 * 0.317311 / n), f"sample {b}: not Gaussian"
    # E[(x' − μ)²/s²] = 1, so the log-prob sits at −½ − log s − ½ log 2π.
    expected = -0.5 - step.std.flatten().double().log() - 0.5 * math.log(2 * math.pi)
    assert (step.log_prob.double() - expected).abs().max() < 4 * math.sqrt(2 / n) / 2


def test_noise_is_standard_normal_from_the_generator():
    """Seeds reproduce: x' = μ + s·randn(latents.shape, generator) in the compute dtype (diffusers' convention)."""
    x, v = _xv(dtype=torch.bfloat16)
    step = sde_step(v, x, 0.8, 0.7, generator=torch.Generator().manual_seed(11))
    xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
    assert torch.equal(step.prev_sample, step.mean + step.std * xi)
    rows = sde_step(v, x, 0.8, 0.7, generator=[torch.Generator().manual_seed(k) for k in (1, 2, 3)])
    xi = torch.cat([torch.randn((1, *x.shape[1:]), generator=torch.Generator().manual_seed(k)) for k in (1, 2, 3)])
    assert torch.equal(rows.prev_sample, rows.mean + rows.std * xi)


def test_per_sample_generators_make_noise_depend_only_on_own_seed():
    """Per-sample generators: sample b's noise depends only on generator[b], not on the batch."""
    x, v = _xv(dtype=torch.float32)
    pair = sde_step(v[:2], x[:2], 0.8, 0.7, generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(7)])
    alone = sde_step(v[1:2], x[1:2], 0.8, 0.7, generator=[torch.Generator().manual_seed(7)])
    assert torch.equal(pair.prev_sample[1:2], alone.prev_sample)
    assert not torch.equal(pair.prev_sample[0], pair.prev_sample[1] - pair.mean[1] + pair.mean[0])


def test_single_generator_and_global_rng_are_reproducible():
    """The same seed gives the same draw; different seeds different draws."""
    x, v = _xv(dtype=torch.float32)
    a = sde_step(v, x, 0.8, 0.7, generator=torch.Generator().manual_seed(1))
    b = sde_step(v, x, 0.8, 0.7, generator=torch.Generator().manual_seed(1))
    c = sde_step(v, x, 0.8, 0.7, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(9)
    d = sde_step(v, x, 0.8, 0.7)
    torch.manual_seed(9)
    e = sde_step(v, x, 0.8, 0.7)
    assert torch.equal(a.prev_sample, b.prev_sample) and not torch.equal(a.prev_sample, c.prev_sample)
    assert torch.equal(d.prev_sample, e.prev_sample)


# ----------------------------------------------------------------------------- η = 0, ODE, CPS


@pytest.mark.parametrize("dynamics", SDE_DYNAMICS)
def test_eta_zero_reduces_every_sampler_to_euler(dynamics):
    """I2: with η = 0 every sampler gives μ = x + v·dt, s = 0, and deterministic sampling."""
    x, v = _xv(dtype=torch.float32)
    sig = _sigmas(torch.float32)
    for j in (0, 4, 9):
        t, tn = sig[j], sig[j + 1]
        step = sde_step(v, x, t, tn, noise_level=0.0, dynamics=dynamics, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(step.mean, x + v * (tn - t), rtol=0, atol=1e-6)
        assert torch.equal(step.std, torch.zeros_like(step.std)), "s must be 0 at η = 0"
        assert torch.equal(step.prev_sample, step.mean), "η = 0 sampling must be deterministic"
        assert torch.equal(step.log_prob, torch.zeros(3)), "a deterministic step has log-prob 0 by convention"


def test_ode_is_plain_euler_with_zero_log_prob():
    """dynamics='ode': μ = x + v·dt exactly, std 0, log-prob zeros, β = 1, nothing drawn."""
    x, v = _xv()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    step = sde_step(v, x, 0.6, 0.45, dynamics="ode", generator=gen)
    assert torch.equal(gen.get_state(), state), "the ODE step must not consume random numbers"
    torch.testing.assert_close(step.mean, x + v * (0.45 - 0.6), rtol=0, atol=1e-15)
    assert torch.equal(step.prev_sample, step.mean) and not step.log_prob.any() and not step.std.any()
    assert torch.equal(step.beta, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("eta", [0.3, 0.8, 0.99])
def test_cps_std_stays_below_next_sigma(eta):
    """I14: CPS s = σ_{j+1}·sin(ηπ/2) < σ_{j+1}, so √(σ_{j+1}² − s²) is real; std_dev_t = s (no √|dt|)."""
    x, v = _xv()
    sig = _sigmas()
    t, tn = sig[:-2], sig[1:-1]
    x9, v9 = x[:1].expand(9, *x.shape[1:]), v[:1].expand(9, *v.shape[1:])
    step = sde_step(v9, x9, t, tn, noise_level=eta, dynamics="cps", generator=torch.Generator().manual_seed(0))
    s = step.std.flatten()
    assert (s < tn).all() and torch.isfinite(step.mean).all()
    torch.testing.assert_close(s, tn * math.sin(eta * math.pi / 2), rtol=1e-14, atol=0)
    assert torch.equal(step.std_dev_t, s)


# ----------------------------------------------------------------------------- β and per-sample schedules


@pytest.mark.parametrize("dynamics", SDE_DYNAMICS + ["ode"])
def test_mean_derivative_in_velocity_is_beta_dt(dynamics):
    """§1: ∂μ/∂v = β·dt (dt signed, < 0), per sample."""
    x, v = _xv()
    v.requires_grad_(True)
    sig = _sigmas()
    t, tn = sig[[0, 3, 8]], sig[[1, 4, 9]]
    step = sde_step(v, x, t, tn, noise_level=ETA.get(dynamics, 0.7), dynamics=dynamics, generator=torch.Generator())
    (grad,) = torch.autograd.grad(step.mean.sum(), v)
    expected = (step.beta * (tn - t)).view(3, 1, 1, 1).expand_as(grad)
    torch.testing.assert_close(grad, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(step.dt, t - tn, rtol=0, atol=0)


@pytest.mark.parametrize("dynamics", SDE_DYNAMICS)
def test_per_sample_sigmas_match_separate_steps(dynamics):
    """I15: a batch whose samples sit at different steps gives each sample what it gets alone."""
    x, v = _xv(shape=(4, 2, 5, 5))
    sig = _sigmas()
    js = [0, 2, 5, 8]
    kw = dict(noise_level=ETA[dynamics], dynamics=dynamics, cps_logprob="gaussian")
    xp = x + 0.5 * torch.randn_like(x)
    batch = sde_step(v, x, sig[js], sig[[j + 1 for j in js]], prev_sample=xp, **kw)
    for b, j in enumerate(js):
        alone = sde_step(v[b:b + 1], x[b:b + 1], float(sig[j]), float(sig[j + 1]), prev_sample=xp[b:b + 1], **kw)
        for name in ("mean", "std", "log_prob", "std_dev_t", "beta", "dt"):
            torch.testing.assert_close(getattr(batch, name)[b:b + 1], getattr(alone, name), rtol=1e-14, atol=1e-15,
                                       msg=f"sample {b} (step {j}) {name} depends on the batch")


def test_step_returns_documented_shapes():
    """SDEStep: mean/prev_sample like latents, std (B, 1, ..., 1), the rest (B,); also for packed (B, N, C) latents."""
    for shape in [(3, 4, 6, 6), (3, 16, 8)]:
        x, v = _xv(shape=shape)
        step = sde_step(v, x, 1.0, 0.9, generator=torch.Generator())
        assert isinstance(step, SDEStep)
        assert step.prev_sample.shape == step.mean.shape == shape
        assert step.std.shape == (3,) + (1,) * (len(shape) - 1)
        assert step.log_prob.shape == step.std_dev_t.shape == step.beta.shape == step.dt.shape == (3,)


def test_step_log_prob_zero_std_is_deterministic_zero():
    """A sample with s = 0 gets log-prob 0 (not NaN); others are unaffected."""
    x, _ = _xv()
    lp = step_log_prob(x + 0.1, x, torch.tensor([0.5, 0.0, 0.2], dtype=F64))
    assert lp[1] == 0 and torch.isfinite(lp).all()
    assert float(lp[0]) == pytest.approx(-0.01 / (2 * 0.5**2) - math.log(0.5) - 0.5 * math.log(2 * math.pi), rel=1e-12)


# ----------------------------------------------------------------------------- bad arguments


def _call(**over):
    x, v = _xv()
    kw = dict(velocity=v, latents=x, sigma=0.8, sigma_next=0.7)
    kw.update(over)
    return sde_step(kw.pop("velocity"), kw.pop("latents"), kw.pop("sigma"), kw.pop("sigma_next"), **kw)


NAN_X = torch.full(SHAPE, math.nan, dtype=F64)


@pytest.mark.parametrize(("over", "name"), [
    (dict(dynamics="euler"), "dynamics"),
    (dict(cps_logprob="sum"), "cps_logprob"),
    (dict(noise_level=-0.1), "noise_level"),
    (dict(noise_level=math.inf), "noise_level"),
    (dict(noise_level=1.5, dynamics="cps"), "noise_level"),
    (dict(sigma=1.5), "sigma"),
    (dict(sigma=-0.1, sigma_next=-0.2), "sigma"),
    (dict(sigma_next=0.8), "sigma_next"),
    (dict(sigma_next=0.9), "sigma_next"),
    (dict(sigma_next=math.nan), "sigma_next"),
    (dict(sigma=torch.tensor([0.8, 0.5, 0.3]), sigma_next=torch.tensor([0.7, 0.6, 0.2])), "sigma_next"),
    (dict(sigma=torch.tensor([0.8, 1.2, 0.3]), sigma_next=0.1), "sigma"),
    (dict(sigma=torch.tensor([0.8, 0.5])), "sigma"),
    (dict(velocity=torch.zeros(3, 4, 6, 5, dtype=F64)), "velocity"),
    (dict(velocity=torch.zeros(SHAPE, dtype=torch.long)), "velocity"),
    (dict(latents=torch.zeros(3)), "latents"),
    (dict(prev_sample=torch.zeros(2, 4, 6, 6, dtype=F64)), "prev_sample"),
    (dict(velocity=NAN_X), "velocity"),
    (dict(latents=torch.full(SHAPE, math.inf, dtype=F64)), "latents"),
    (dict(prev_sample=NAN_X), "prev_sample"),
    (dict(generator=[torch.Generator()] * 2), "generator"),
    (dict(generator="seed"), "generator"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(over, name):
    """Bad input: a ValueError whose message names the offending argument."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        _call(**over)


def test_overflowing_inputs_are_reported_not_propagated():
    """Finite but absurd inputs that overflow (x' − μ)² raise a ValueError naming the inputs."""
    with pytest.raises(ValueError, match="overflowed: `velocity`, `latents` or `prev_sample`"):
        _call(velocity=torch.full(SHAPE, 1e200, dtype=F64), prev_sample=torch.zeros(SHAPE, dtype=F64))


def test_validate_false_skips_value_checks():
    """validate=False skips the data-dependent checks (no device sync); shapes are still checked."""
    step = _call(velocity=NAN_X, validate=False)
    assert torch.isnan(step.mean).all()
    with pytest.raises(ValueError, match="`velocity`"):
        _call(velocity=torch.zeros(1, 2, dtype=F64), validate=False)


@pytest.mark.parametrize(("args", "name"), [((0, 3.0), "num_steps"), ((10, 0.0), "shift"), ((2.5, 3.0), "num_steps")])
def test_flow_sigmas_bad_arguments(args, name):
    """flow_sigmas rejects a bad step count or shift by name."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        flow_sigmas(*args)

"""Property-based checks (hypothesis, ≤ 50 examples each, no deadline): RunConfig round trips
through YAML and JSON; random invalid values give ConfigError naming the field and nothing else;
sde_step / policy_loss refuse bad shapes and non-finite inputs with ValueError only."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_guard.config import ALGORITHMS, ConfigError, RunConfig

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

valid_configs = st.fixed_dictionaries({
    "algorithm": st.sampled_from(ALGORITHMS),
    "group_size": st.integers(2, 64),
    "prompts_per_epoch": st.integers(1, 64),
    "epochs": st.integers(1, 10_000),
    "train_batch_size": st.integers(1, 64),
    "seed": st.integers(0, 2**31 - 1),
    "learning_rate": st.floats(1e-8, 1.0, allow_nan=False),
    "noise_level": st.floats(0.0, 10.0, allow_nan=False),
    "resolution": st.integers(2, 256).map(lambda k: 4 * k),
    "eval_seeds": st.lists(st.integers(0, 1000), min_size=1, max_size=5),
    "rewards": st.dictionaries(st.sampled_from(["toy_fg_share", "toy_classifier_confidence", "jpeg_compressibility"]),
                               st.floats(0.01, 100.0, allow_nan=False), min_size=1),
    "gold": st.lists(st.sampled_from(["toy_alignment", "toy_fidelity", "toy_shape"]), max_size=3),
    "prompts": st.one_of(st.just("toy:train"), st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4)),
    "ema": st.booleans(),
})


@SETTINGS
@given(valid_configs)
def test_valid_configs_round_trip_through_yaml_and_json(data):
    cfg = RunConfig.from_dict(data)
    again = RunConfig.from_yaml(cfg.to_yaml())
    assert again.to_dict() == cfg.to_dict()
    assert RunConfig.from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()
    cfg.check_submittable()


BAD_VALUES = {
    "group_size": st.one_of(st.integers(max_value=1), st.integers(min_value=4097), st.text(max_size=5)),
    "epochs": st.one_of(st.integers(max_value=0), st.integers(min_value=10_000_001), st.floats(0.1, 0.9)),
    "learning_rate": st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.floats(min_value=1.01)),
    "noise_level": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=10.01), st.just(math.nan)),
    "resolution": st.one_of(st.integers(max_value=7), st.integers(2, 1000).map(lambda k: 4 * k + 1)),
    "backbone": st.text(max_size=8).filter(lambda s: s not in ("toy", "sd3", "flux")),
    "algorithm": st.text(max_size=8).filter(lambda s: s not in ALGORITHMS),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**31)),
    "eval_seeds": st.one_of(st.just([]), st.lists(st.text(min_size=1, max_size=3).filter(lambda s: not s.strip().lstrip("-").isdigit()), min_size=1, max_size=3)),
    "rewards": st.one_of(st.just({}), st.dictionaries(st.just("toy_fg_share"), st.one_of(st.floats(max_value=-1e-9), st.just(math.nan)), min_size=1),
                         st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda s: ":" in s or "." in s or "/" in s), st.just(1.0), min_size=1)),
    "adam_beta1": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9)),
    "mixed_precision": st.text(max_size=6).filter(lambda s: s not in ("no", "bf16", "fp16")),
}


@SETTINGS
@given(st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda f: st.tuples(st.just(f), BAD_VALUES[f])))
def test_invalid_values_give_a_config_error_naming_the_field(case):
    field, value = case
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({field: value})
    assert any(k.split(".", 1)[0] == field for k, _ in err.value.errors), err.value.errors


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=8),
                                                        st.lists(st.integers(), max_size=3)), max_size=6))
def test_arbitrary_mappings_either_validate_or_raise_config_error(data):
    try:
        RunConfig.from_dict(data)
    except ConfigError as e:
        assert e.errors and all(isinstance(f, str) and m for f, m in e.errors)


# ---- the math functions' argument checks ---------------------------------------------------
torch = pytest.importorskip("torch")


def _bad_tensor(draw, shape, kinds=("nan", "inf", "shape", "ok")):
    kind = draw(st.sampled_from(kinds))
    t = torch.randn(*shape)
    if kind == "nan":
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = math.nan
    elif kind == "inf":
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = -math.inf
    elif kind == "shape":
        t = torch.randn(*[s + draw(st.integers(1, 2)) for s in shape])
    return kind, t


@st.composite
def sde_args(draw):
    B = draw(st.integers(1, 3))
    shape = (B, 2, 3, 3)
    args = {}
    bad = []
    for name in ("velocity", "latents"):  # a wrong shape on one of the two (both wrong alike would be fine)
        kind, t = _bad_tensor(draw, shape, ("nan", "inf", "shape", "ok") if name == "velocity" else ("nan", "inf", "ok"))
        args[name] = t
        bad.append(kind != "ok")
    sigma = draw(st.one_of(st.floats(0.05, 0.95), st.just(math.nan), st.floats(1.5, 3.0), st.floats(-2.0, -0.1)))
    sigma_next = draw(st.one_of(st.floats(0.0, 0.04), st.just(math.inf), st.floats(0.96, 1.0)))
    ok_sigma = 0.05 <= sigma <= 0.95 and 0 <= sigma_next <= 0.04
    bad.append(not ok_sigma)
    return args, sigma, sigma_next, any(bad)


@SETTINGS
@given(sde_args(), st.sampled_from(["flow_grpo", "dance_grpo", "cps"]))
def test_sde_step_raises_value_error_only(case, dynamics):
    from grpo_guard.sde import sde_step

    args, sigma, sigma_next, is_bad = case
    try:
        out = sde_step(args["velocity"], args["latents"], sigma, sigma_next, dynamics=dynamics)
    except ValueError:
        return
    assert not is_bad, "bad input was accepted"
    assert torch.isfinite(out.log_prob).all()


@st.composite
def loss_args(draw):
    B = draw(st.integers(2, 4))
    bad = False
    parts = {}
    for name in ("log_prob", "old_log_prob", "advantages"):
        kind, t = _bad_tensor(draw, (B,), ("nan", "inf", "shape", "ok") if name != "log_prob" else ("nan", "inf", "ok"))
        parts[name] = t
        bad |= kind != "ok"
    clip = draw(st.one_of(st.floats(1e-6, 1.0), st.just(math.nan), st.floats(-1.0, 0.0)))
    bad |= not (1e-6 <= clip <= 1.0)
    return parts, clip, bad


@SETTINGS
@given(loss_args())
def test_policy_loss_raises_value_error_only(case):
    from grpo_guard.policy import policy_loss

    parts, clip, is_bad = case
    try:
        out = policy_loss(parts["log_prob"], parts["old_log_prob"], parts["advantages"], clip_range=clip)
    except ValueError:
        return
    assert not is_bad, "bad input was accepted"
    assert torch.isfinite(out.loss)

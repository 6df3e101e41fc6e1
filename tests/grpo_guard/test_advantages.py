"""Group advantages (ALGORITHM.md §3.1, §7 I12): both std scopes, zero-variance groups, clamping,
bad input."""

import math

import pytest
import torch

from grpo_guard.policy import group_advantages, zero_variance_mask

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_advantages_match_hand_computed_values_for_both_std_scopes():
    """I12: A = (R − group mean)/(std + 1e-4) with population std over the batch (global) or the group."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0], dtype=F64)
    groups = ["a", "a", "a", "b", "b", "b"]
    std_all = math.sqrt((100 + 81 + 64 + 1 + 81 + 361) / 6)  # deviations from the batch mean 11
    glob = group_advantages(rewards, groups, std_scope="global", clip=None)
    expected = torch.tensor([-1, 0, 1, -10, 0, 10], dtype=F64) / (std_all + 1e-4)
    torch.testing.assert_close(glob, expected, rtol=1e-14, atol=0)
    grp = group_advantages(rewards, groups, std_scope="group", clip=None)
    expected = torch.tensor([-1 / (math.sqrt(2 / 3) + 1e-4), 0, 1 / (math.sqrt(2 / 3) + 1e-4),
                             -10 / (math.sqrt(200 / 3) + 1e-4), 0, 10 / (math.sqrt(200 / 3) + 1e-4)], dtype=F64)
    torch.testing.assert_close(grp, expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("std_scope", ["global", "group"])
def test_advantage_group_means_are_zero(std_scope):
    """I12: the per-group mean of A is 0 (no clamping active)."""
    rewards = torch.rand(24, generator=_gen(0), dtype=F64)
    groups = torch.arange(4).repeat_interleave(6)
    adv = group_advantages(rewards, groups, std_scope=std_scope)
    assert adv.shape == (24,) and adv.dtype == F64
    torch.testing.assert_close(adv.view(4, 6).mean(1), torch.zeros(4, dtype=F64), rtol=0, atol=1e-14)


def test_zero_variance_group_gets_exactly_zero_and_is_masked():
    """I12: a group with all-equal rewards gets A = 0 exactly (even where the float mean rounds) and is masked."""
    rewards = [0.1, 0.1, 0.1, 0.3, 0.7, 0.2]  # 0.1·3/3 != 0.1 in floating point
    groups = [7, 7, 7, 9, 9, 9]
    for scope in ("global", "group"):
        adv = group_advantages(rewards, groups, std_scope=scope)
        assert adv.dtype == torch.float32
        assert torch.equal(adv[:3], torch.zeros(3)), "zero-variance group must give A = 0 exactly"
        assert (adv[3:] != 0).all()
    assert zero_variance_mask(rewards, groups).tolist() == [True] * 3 + [False] * 3


def test_advantages_are_clamped():
    """I12: |A| ≤ clip after clamping (5 by default); clip=None leaves the outlier."""
    rewards = torch.zeros(30, dtype=F64)
    rewards[0] = 1.0
    groups = torch.zeros(30, dtype=torch.long)
    raw = group_advantages(rewards, groups, std_scope="group", clip=None)
    assert float(raw[0]) > 5
    adv = group_advantages(rewards, groups, std_scope="group")
    assert float(adv[0]) == 5.0 and float(adv.abs().max()) <= 5.0
    assert float(group_advantages(rewards, groups, std_scope="group", clip=2.0).abs().max()) == 2.0


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(std_scope="batch"), "std_scope"), (dict(clip=0.0), "clip"), (dict(clip=-1.0), "clip"),
])
def test_group_advantages_bad_arguments(kwargs, name):
    """Bad std_scope/clip raise a ValueError naming the argument."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        group_advantages([1.0, 2.0], [0, 0], **kwargs)


@pytest.mark.parametrize(("rewards", "groups", "name"), [
    ([1.0, math.nan], [0, 0], "rewards"), ([[1.0, 2.0]], [0, 0], "rewards"), ([1.0, 2.0], [0], "group_ids"),
    ([1.0, 2.0], torch.tensor([0.5, 1.5]), "group_ids"),
])
def test_group_advantages_bad_inputs(rewards, groups, name):
    """NaN rewards, wrong shapes or float group ids raise a ValueError naming the argument."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        group_advantages(rewards, groups)

"""``update_rows_per_forward``: chunking a micro-batch's forward and backward leaves the update
unchanged — in float64, loss and gradients equal the unchunked ones to 1e-10."""

from __future__ import annotations

import pytest
import torch

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.models.base import Backbone
from grpo_guard.training import update as U
from grpo_guard.training.rollout import Rollout
from grpo_guard.training.train_state import TrainerState

LATENT = (2, 4, 4)
REAL_POLICY_LOSS = U.policy_loss


class DoubleBackbone(Backbone):
    """A float64 stand-in with the adapters' CFG layout: one batched pass over [uncond; cond]."""

    name = "double"

    def __init__(self, branches_seen: list[int]):
        torch.manual_seed(0)
        d = 2 * 4 * 4
        self.device = torch.device("cpu")
        self.transformer = torch.nn.Sequential(torch.nn.Linear(d + 3, 24), torch.nn.Tanh(),
                                               torch.nn.Linear(24, d)).double()
        self.seen = branches_seen

    @classmethod
    def from_config(cls, config, device=None):
        raise AssertionError("the chunked update must not call from_config")

    def latent_shape(self, resolution):  # pragma: no cover
        return LATENT

    def sigmas(self, num_steps, shift, resolution):  # pragma: no cover
        return torch.linspace(1, 0, num_steps + 1)

    def encode_prompts(self, prompts):
        raise AssertionError("the chunked update must not call encode_prompts")

    def velocity(self, latents, sigma, embeds, *, cfg_scale, detach_uncond=False):
        b = latents.shape[0]
        e = embeds["e"]
        xx = torch.cat([latents, latents]).flatten(1)
        cond = torch.cat([torch.zeros_like(e), e])
        out = self.transformer(torch.cat([xx, cond, torch.cat([sigma, sigma])[:, None]], 1))
        self.seen.append(out.shape[0])
        v_u, v_c = out.view(2 * b, *latents.shape[1:]).chunk(2)
        return v_u + cfg_scale * (v_c - v_u)

    def decode(self, latents):
        raise AssertionError("the chunked update must not call decode")

    def add_lora(self, rank, alpha, targets):
        raise AssertionError("the chunked update must not call add_lora")

    def trainable_parameters(self):
        return list(self.transformer.parameters())

    def trainable_state_dict(self):  # pragma: no cover
        return {}

    def load_trainable_state_dict(self, state):  # pragma: no cover
        pass


class CaptureSGD(torch.optim.SGD):
    """lr 0: records the accumulated gradients at each optimizer step and changes nothing."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])


def rollout(n: int = 6, s: int = 3) -> Rollout:
    g = torch.Generator().manual_seed(1)
    sig = torch.tensor([1.0, 0.8, 0.55, 0.3], dtype=torch.float64)
    x = torch.randn(n, s, *LATENT, generator=g, dtype=torch.float64)
    mean = x - 0.1 * torch.randn(n, s, *LATENT, generator=g, dtype=torch.float64)
    x_next = mean + 0.05 * torch.randn(n, s, *LATENT, generator=g, dtype=torch.float64)
    return Rollout(prompts=["a", "b"], prompt_index=torch.arange(n) % 2,
                   embeds={"e": torch.randn(2, 2, generator=g, dtype=torch.float64)},
                   x=x, x_next=x_next, mean=mean,
                   log_prob=torch.randn(n, s, generator=g, dtype=torch.float64) * 1e-3,
                   sigma=sig[:s].expand(n, s).clone(), sigma_next=sig[1:s + 1].expand(n, s).clone(),
                   step_index=torch.arange(s).expand(n, s).clone(), final=x[:, -1])


def run(rows_per_forward, config: RunConfig, monkeypatch, losses: list):
    seen: list[int] = []
    bb = DoubleBackbone(seen)
    opt = CaptureSGD(bb.trainable_parameters())

    def recording(log_prob, *a, **kw):
        out = REAL_POLICY_LOSS(log_prob, *a, **kw)
        if not kw.get("compute_stats", True):  # the training calls, not the epoch's statistics
            losses.append((int(log_prob.shape[0]), out.loss.detach().clone()))
        return out

    monkeypatch.setattr(U, "policy_loss", recording)
    adv = torch.linspace(-1.5, 2.0, 6, dtype=torch.float64)
    batches = [torch.tensor([4, 0, 2]), torch.tensor([1, 5, 3])]
    res = U.policy_update(bb, opt, bb.trainable_parameters(), rollout(), adv, batches, config, None,
                          TrainerState(), rows_per_forward=rows_per_forward)
    return res, opt.grads, seen


@pytest.mark.parametrize("algorithm", ["grpo_guard", "flow_grpo"])
def test_chunked_update_equals_unchunked_in_float64(algorithm, monkeypatch):
    cfg = RunConfig(algorithm=algorithm, cfg_scale=4.5, kl_beta=0.0, train_batch_size=3,
                    gradient_accumulation_steps=2, max_grad_norm=0.0, clip_range=0.05)
    whole_losses: list = []
    whole, g_whole, seen_whole = run(None, cfg, monkeypatch, whole_losses)
    assert seen_whole == [18, 18]                      # 3 trajectories × 3 steps × 2 CFG branches
    # 2 branches: 4 rows -> chunks of 2 latent rows (9 = 2+2+2+2+1); 10 -> 5 (5 + 4); 1 -> at least 1 row
    for n, expected in ((4, [4, 4, 4, 4, 2] * 2), (10, [10, 8] * 2), (1, [2] * 18)):
        chunk_losses: list = []
        res, g, seen = run(n, cfg, monkeypatch, chunk_losses)
        assert seen == expected
        assert len(g) == len(g_whole) == 1             # one optimizer step (accumulation 2)
        for a, b in zip(g[0], g_whole[0], strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-10), (n, (a - b).abs().max())
            assert a.abs().max() > 1e-6                # a gradient, not zeros
        # the loss: each micro-batch's chunk losses, weighted by their rows, sum to its loss
        per_mb = iter(chunk_losses)
        for rows, loss in whole_losses:
            total = torch.zeros((), dtype=torch.float64)
            covered = 0
            while covered < rows:
                k, lc = next(per_mb)
                total += lc * k / rows
                covered += k
            assert covered == rows and abs(float(total - loss)) < 1e-10
        for key in (M.LOSS, M.POLICY_LOSS, M.GRAD_NORM, M.ONPOLICY_MAX_ABS_LOGR, M.BACKWARD_ROWS):
            assert res.scalars[key] == pytest.approx(whole.scalars[key], rel=0, abs=1e-10), key
        for j, stats in whole.step_stats.items():
            assert res.step_stats[j][M.GRAD_NORM_V] == pytest.approx(stats[M.GRAD_NORM_V], rel=1e-10)


def test_config_number_chunks_and_auto_takes_all_rows(monkeypatch):
    cfg = RunConfig(cfg_scale=4.5, train_batch_size=3, gradient_accumulation_steps=2, update_rows_per_forward=6)
    _, _, seen = run(None, cfg, monkeypatch, [])
    assert seen == [6] * 6
    _, _, seen = run(None, cfg.with_overrides({"update_rows_per_forward": "auto"}), monkeypatch, [])
    assert seen == [18, 18]


def test_chunk_rows():
    assert U.chunk_rows(162, None, 2) == 162
    assert U.chunk_rows(162, 18, 2) == 9
    assert U.chunk_rows(162, 1, 2) == 1
    assert U.chunk_rows(72, 8, 1) == 8
    assert U.chunk_rows(10, 1000, 1) == 10

"""Checking a plan where memory can be measured: the real policy update on real CPU tensors.

:func:`measured_update_peak` runs one micro-batch of the trainer's own ``policy_update`` (real
backbone, real rollout, AdamW) under ``torch.distributed._tools.mem_tracker.MemTracker``, which
counts every live tensor storage (weights, gradients, optimizer state, activations, the rollout),
and returns the peak. :func:`planned_update_peak` is the plan's update phase for the same run on
the CPU (float32 weights), restricted to what the measurement holds (the transformer's weights,
not the text encoders, VAE or reward models, which the update does not touch). Used by the tests
and ``benchmarks/plan``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed._tools import mem_tracker as _mt


class MemTracker(_mt.MemTracker):
    """torch's MemTracker, except that it installs gradient hooks only on parameters that take a
    gradient (torch 2.13's registers one on every parameter, which fails on a LoRA model's frozen
    weights)."""

    def _track_module_params_and_buffers(self, module: torch.nn.Module, install_grad_hooks: bool = True):
        def _grad_hook(grad: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, _mt._MemRefType.GRAD)

        params = 0
        for p in module.parameters():
            params += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(p, _mt._MemRefType.PARAM))
            if p.grad is not None:
                self._update_and_maybe_create_winfos(p.grad, _mt._MemRefType.GRAD)
            if install_grad_hooks and p.requires_grad and self._param_to_grad_hook_handles.get(p, None) is None:
                self._param_to_grad_hook_handles[p] = (
                    p.register_hook(_grad_hook),
                    p.register_post_accumulate_grad_hook(lambda q: _grad_hook(q.grad)))
        buffers = 0
        for b in module.buffers():
            buffers += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(b, _mt._MemRefType.BUFFER))
        return params, buffers


def measured_update_peak(config: Any, backbone: Any) -> int:
    """Peak live tensor bytes (MemTracker, real CPU tensors) of one micro-batch of ``policy_update``
    — a rollout of the config's ``group_size × prompts_per_epoch`` trajectories, one optimizer step
    of an AdamW whose moments already exist (as after a run's first step).
    The backbone must already carry its LoRA (``add_lora``)."""
    from grpo_guard.training.rollout import Rollout
    from grpo_guard.training.train_state import TrainerState
    from grpo_guard.training.update import policy_update

    c = config
    n, s = c.group_size * c.prompts_per_epoch, c.num_trained_steps()
    shape = backbone.latent_shape(c.resolution)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, s, *shape, generator=g)
    mean = x + 0.01 * torch.randn(n, s, *shape, generator=g)
    sig = backbone.sigmas(c.num_steps, c.shift, c.resolution)
    embeds = backbone.encode_prompts(["a red circle", "a blue square"])
    ro = Rollout(prompts=["a red circle", "a blue square"], prompt_index=torch.arange(n) % 2, embeds=embeds,
                 x=x, x_next=mean + 0.01 * torch.randn(n, s, *shape, generator=g), mean=mean,
                 log_prob=torch.zeros(n, s), sigma=sig[:s].expand(n, s).clone(), sigma_next=sig[1:s + 1].expand(n, s).clone(),
                 step_index=torch.arange(s).expand(n, s).clone(), final=torch.zeros(n, *shape))
    params = backbone.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-6, foreach=False)
    for p in params:  # the steady state of a run: AdamW's moments exist from its first step on
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    adv = torch.linspace(-1, 1, n)
    mt = MemTracker()
    mt.track_external(backbone.transformer, opt, x, ro.x_next, ro.mean, ro.final, *embeds.values())
    with mt:
        policy_update(backbone, opt, params, ro, adv, [torch.arange(min(n, c.train_batch_size))], c, None,
                      TrainerState(), grad_norm_v=True)
    return max(snap[_mt._TOTAL_KEY] for snap in mt.get_tracker_snapshot("peak").values())


def planned_update_peak(config: Any) -> int:
    """The plan's update phase on the CPU, less the components the measurement leaves out (text
    encoders, VAE, reward models, EMA) — the same run :func:`measured_update_peak` measures."""
    from grpo_guard.planning.gpus import gpu_from_memory
    from grpo_guard.planning.plan import frozen_parameters, make_plan
    from grpo_guard.planning.spec import spec_for

    cfg = config.with_overrides({"ema": False})
    plan = make_plan(cfg, gpu_from_memory(1000.0), device="cpu")
    parts = plan.phase_bytes["update"]
    others = sum(frozen_parameters(spec_for(cfg)).values()) * 4   # float32 on the CPU
    return sum(v for k, v in parts.items() if k != "reward models") - others

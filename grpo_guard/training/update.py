"""The policy update of one epoch: micro-batches of trajectories, all trained steps batched into one
forward and one backward per micro-batch, one optimizer step per ``gradient_accumulation_steps``
micro-batches (ALGORITHM.md §3.4, §4.4, invariant I16).

Batching the S trained steps of a micro-batch into one (B·S)-row forward computes the same loss as
Flow-GRPO's S separate forward/backward calls — mean_B·S of the per-row loss is (1/S)·Σ_j L_j, the
scaling accelerate applies with ``gradient_accumulation_steps × num_train_timesteps`` — in one
larger, faster call. Every schedule constant is per row (§1 rule 5), so rows at different steps
(DanceGRPO) are handled too.

Per-denoising-step statistics (§8) are computed once per epoch from the rows actually trained:
the ``policy_loss`` statistics of each step j over all its rows, plus ``grad_norm_v`` =
‖∂L_j/∂v‖ read off the velocity's gradient, which the backward pass computes anyway (no extra cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.distributed.tensor import DTensor

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.models.base import Backbone, select_embeds
from grpo_guard.policy import policy_loss
from grpo_guard.sde import sde_step
from grpo_guard.training.distributed import max_over_ranks
from grpo_guard.training.ema import EMA
from grpo_guard.training.interrupt import UpdateInterrupted
from grpo_guard.training.rollout import Rollout
from grpo_guard.training.train_state import TrainerState


@dataclass
class UpdateResult:
    scalars: dict[str, float]
    step_stats: dict[int, dict[str, float]]  # denoising step j -> §8 statistics
    sigma: dict[int, tuple[float, float]] = field(default_factory=dict)  # j -> (σ_j, |dt_j|)
    optimizer_steps: int = 0


def has_active_dropout(module: torch.nn.Module) -> bool:
    """True if ``module.train()`` would change its outputs (a dropout with p > 0)."""
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


def micro_batches(keep: torch.Tensor, dropped: torch.Tensor, num_batches: int, inner_epochs: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle the kept samples into ``num_batches`` equal micro-batches per inner epoch. The keep
    list is padded with random dropped (zero-advantage) samples until its length divides evenly
    (ALGORITHM.md §3.1), so the number of optimizer steps per epoch does not depend on the rewards."""
    pad = (-keep.numel()) % num_batches
    if pad and dropped.numel():
        extra = dropped[torch.randperm(dropped.numel(), generator=generator)[:pad]]
        keep = torch.cat([keep, extra])
    if keep.numel() < num_batches:
        num_batches = max(1, keep.numel())
    out = []
    for _ in range(inner_epochs):
        order = keep[torch.randperm(keep.numel(), generator=generator)]
        out.extend(order.tensor_split(num_batches))
    return [mb for mb in out if mb.numel()]


def policy_update(backbone: Backbone, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                  ro: Rollout, advantages: torch.Tensor, batches: list[torch.Tensor], config: RunConfig,
                  ema: EMA | None, state: TrainerState, *, grad_norm_v: bool = True,
                  grad_sync: Callable[[list[torch.nn.Parameter]], None] | None = None,
                  should_abort: Callable[[], bool] | None = None,
                  rows_per_forward: int | None = None, lockstep: bool = False) -> UpdateResult:
    """Run the update over ``batches`` (index tensors into the rollout). ``state.optimizer_steps``
    (the run's count, which sets the EMA cadence) is advanced in place. ``grad_norm_v=False``
    skips the per-step velocity-gradient norms (only the benchmark uses it, to measure their cost).
    ``grad_sync`` (data parallel) averages the accumulated gradients over the ranks before each
    clip + optimizer step; every rank must then pass the same number of ``batches`` (pad with
    empty index tensors). ``should_abort`` is asked before each micro-batch; when it says yes the
    update raises ``UpdateInterrupted`` (the caller puts its pre-update snapshot back). ``rows_per_forward`` (transformer rows, CFG branches counted) chunks each
    micro-batch's forward and backward; None takes ``config.update_rows_per_forward`` when it is a
    number, else (``auto`` unresolved) all rows at once. ``lockstep`` (sharded weights, where
    every forward and backward is a collective over the ranks): every rank runs as many forward +
    backward chunks per micro-batch as the busiest rank, the missing ones on one row with the loss
    scaled by 0 (it adds zero gradients, as DDP's empty micro-batches do)."""
    c = config
    if rows_per_forward is None and isinstance(c.update_rows_per_forward, int):
        rows_per_forward = c.update_rows_per_forward
    accum = c.gradient_accumulation_steps
    use_train_mode = not has_active_dropout(backbone.transformer)  # I3: identical forward values
    log_prob_form = "neg_mse" if c.dynamics == "cps" and c.cps_logprob == "flow_grpo" else "gaussian"
    reweight = bool(c.grad_reweight) and c.delta != "none"
    steps = ro.step_index.shape[1]
    rows_mb: list[dict[str, torch.Tensor]] = []
    grad_sq: dict[int, list[float]] = {}
    grad_norms: list[float] = []
    onpolicy_max = 0.0
    n_opt = 0
    optimizer.zero_grad(set_to_none=True)
    for k, mb in enumerate(batches):
        if should_abort is not None and should_abort():
            raise UpdateInterrupted(f"interrupted before micro-batch {k + 1} of {len(batches)}")
        # a. Gather the micro-batch: B trajectories × S trained steps -> B·S rows.
        group_start = k - k % accum
        in_group = min(accum, len(batches) - group_start)
        b = mb.numel()
        # An empty micro-batch pads a data-parallel rank that has fewer samples than another: it
        # computes nothing but still reaches the gradient all-reduce of its optimizer step.
        rows = b * steps
        chunk = chunk_rows(rows, rows_per_forward, backbone.cfg_branches(c.cfg_scale, c.detach_uncond)) if b else 1
        n_chunks = math.ceil(rows / chunk)
        idle = (max_over_ranks(n_chunks) - n_chunks) if lockstep else 0  # before any sharded forward
        if b:
            g_parts: list[torch.Tensor] = []
            for a in range(0, rows, chunk):
                # Rows a..a+n of the micro-batch's B·S (trajectory-major); each chunk's mean loss is
                # weighted n/rows, so the accumulated gradient is the unchunked update's exactly.
                sel = slice(a, min(rows, a + chunk))
                out, st, v, rec = _forward_backward(backbone, ro, mb, sel, steps, advantages, c, log_prob_form,
                                                    reweight, use_train_mode, grad_norm_v,
                                                    total=rows, in_group=in_group, validate=k == 0 and a == 0)
                with torch.no_grad():
                    rows_mb.append(rec)
                    if grad_norm_v:
                        g_parts.append(v.grad.flatten(1).square().sum(1))
                    if n_opt == 0:  # micro-batches before the epoch's first optimizer step are on-policy (I3)
                        onpolicy_max = max(onpolicy_max, float((st.log_prob.detach() - rec["old_lp"]).abs().max()),
                                           float(out.log_ratio.detach().abs().max()))
                del out, st, v
            # ‖∂L_j/∂v‖: the loss is the mean over B·S rows / in_group, L_j the mean over step j's rows.
            if grad_norm_v:
                with torch.no_grad():
                    g = torch.cat(g_parts)                             # (B·S,)
                    j_rows = ro.step_index[mb].flatten()
                    for j in j_rows.unique().tolist():
                        sel_j = j_rows == j
                        scale = float(in_group) * b * steps / int(sel_j.sum())
                        grad_sq.setdefault(j, []).append(float(g[sel_j].sum()) * scale * scale)

        for _ in range(idle):  # lockstep: this rank's share of the busiest rank's sharded forwards
            _forward_backward(backbone, ro, torch.zeros(1, dtype=torch.long), slice(0, 1), steps, advantages, c,
                              log_prob_form, reweight, use_train_mode, False, total=1, in_group=1,
                              validate=False, scale=0.0)

        # e. Optimizer step after `accum` micro-batches (and at the end of the epoch).
        if k - group_start + 1 == in_group:
            if grad_sync is not None:
                grad_sync(params)
            norm = torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm > 0 else math.inf)
            if isinstance(norm, DTensor):  # sharded gradients: the norm over every shard, on every rank
                norm = norm.full_tensor()
            grad_norms.append(float(norm))
            if not math.isfinite(grad_norms[-1]):  # a NaN/inf loss: never write it into the weights
                raise FloatingPointError(
                    f"the policy gradient is not finite (norm {grad_norms[-1]}), so the optimizer step was not "
                    "applied; resume from the last checkpoint, or lower learning_rate or clip_range")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            n_opt += 1
            state.optimizer_steps += 1
            if ema is not None and state.optimizer_steps % c.ema_every == 0:
                ema.update()
    backbone.eval()

    # f. Per-step statistics over every row trained this epoch.
    step_stats, sigma_dt = _per_step_stats(rows_mb, ro, c, log_prob_form)
    for j, vals in grad_sq.items():
        step_stats.setdefault(j, {})[M.GRAD_NORM_V] = math.sqrt(sum(vals) / len(vals))
    allstats = list(step_stats.values())
    scalars = {
        M.POLICY_LOSS: _avg(allstats, M.STEP_POLICY_LOSS), M.LOSS: _avg(allstats, M.STEP_LOSS),
        M.GRAD_NORM: sum(grad_norms) / max(1, len(grad_norms)),
        M.LR: optimizer.param_groups[0]["lr"], M.OPTIMIZER_STEPS: float(state.optimizer_steps),
        M.OPTIMIZER_STEPS_EPOCH: float(n_opt), M.MICRO_BATCHES: float(len(batches)),
        M.BACKWARD_ROWS: float(sum(int(r["j"].numel()) for r in rows_mb)),
        M.ONPOLICY_MAX_ABS_LOGR: onpolicy_max,
        M.RATIO_MEAN_MINUS_1: _avg(allstats, M.RHAT_MEAN_MINUS_1 if c.ratio_norm else M.R_MEAN_MINUS_1),
        M.RATIO_STD: _avg(allstats, M.RHAT_STD if c.ratio_norm else M.R_STD),
        M.RATIO_CLIP_FRAC: _avg(allstats, M.CLIP_HIGH) + _avg(allstats, M.CLIP_LOW),
    }
    if c.kl_beta > 0:
        scalars[M.KL] = _avg(allstats, M.KL_REF)
    if ema is not None:
        scalars[M.EMA_DECAY] = ema.decay
    return UpdateResult(scalars=scalars, step_stats=step_stats, sigma=sigma_dt, optimizer_steps=n_opt)


def chunk_rows(rows: int, rows_per_forward: int | None, branches: int) -> int:
    """Latent rows per chunk: ``rows_per_forward`` transformer rows make ``rows_per_forward //
    branches`` latent rows (CFG doubles each), at least one; None or more than ``rows``: all."""
    if rows_per_forward is None:
        return max(1, rows)
    return max(1, min(rows, rows_per_forward // max(1, branches)))


def _forward_backward(backbone: Backbone, ro: Rollout, mb: torch.Tensor, sel: slice, steps: int,
                      advantages: torch.Tensor, c: RunConfig, log_prob_form: str, reweight: bool,
                      use_train_mode: bool, grad_norm_v: bool, *, total: int, in_group: int, validate: bool,
                      scale: float = 1.0):
    """Forward with grad over rows ``sel`` of micro-batch ``mb``'s ``total`` = B·S rows, the loss, and
    its backward scaled by the chunk's share of the rows and 1 / ``in_group``. Returns (loss output, SDE step, velocity, detached record)."""
    # a. Gather only this chunk's rows: flat row r is trajectory mb[r // S] at trained step r % S.
    r = torch.arange(sel.start, sel.stop, device=mb.device)
    ti, si = mb[r // steps], r % steps
    x = ro.x[ti, si]                                         # (n, *L)
    x_next = ro.x_next[ti, si]
    old_mean = ro.mean[ti, si]
    old_lp = ro.log_prob[ti, si]                             # (n,)
    sig, sig_next = ro.sigma[ti, si], ro.sigma_next[ti, si]
    j_rows = ro.step_index[ti, si]
    adv = advantages[ti]
    cond = select_embeds(ro.embeds, ro.prompt_index[ti])

    # b. Forward with grad: guided velocity, then the step's mean and log-prob at the stored x'.
    if use_train_mode:
        backbone.train()
    v = backbone.velocity(x, sig, cond, cfg_scale=c.cfg_scale, detach_uncond=c.detach_uncond)
    if grad_norm_v:
        v.retain_grad()
    st = sde_step(v, x, sig, sig_next, noise_level=c.noise_level, dynamics=c.dynamics, prev_sample=x_next,
                  cps_logprob=c.cps_logprob, validate=False)
    ref_mean = None
    if c.kl_beta > 0:
        with torch.no_grad(), backbone.reference():
            v_ref = backbone.velocity(x, sig, cond, cfg_scale=c.cfg_scale)
            ref_mean = sde_step(v_ref, x, sig, sig_next, noise_level=c.noise_level, dynamics=c.dynamics,
                                prev_sample=x_next, cps_logprob=c.cps_logprob, validate=False).mean

    # c. Loss (Flow-GRPO or GRPO-Guard by the config flags) and backward.
    out = policy_loss(st.log_prob, old_lp, adv, clip_range=c.clip_range, ratio_norm=c.ratio_norm,
                      grad_reweight=reweight, mean=st.mean, old_mean=old_mean, std=st.std, dt=st.dt,
                      delta=c.delta if reweight else "inv_dt", beta=st.beta, prev_sample=x_next,
                      kl_beta=c.kl_beta, ref_mean=ref_mean, std_dev_t=st.std_dev_t, adv_clip=c.adv_clip,
                      log_prob_form=log_prob_form, compute_stats=False, validate=validate)
    n = sel.stop - sel.start
    (scale * (out.loss / in_group if n == total else out.loss * (n / total) / in_group)).backward()

    # d. Keep what the epoch's statistics need (detached; no sync here).
    # Latent-sized rollout rows (x', μ_old) are kept as indices, not copies: the epoch's statistics
    # gather them again, so the update holds one latent per row (μ_θ) beside the rollout, not three.
    rec = {"j": j_rows, "ti": ti, "si": si, "lp": st.log_prob.detach(), "old_lp": old_lp, "adv": adv,
           "mean": st.mean.detach(), "std": st.std.detach(), "dt": st.dt, "beta": st.beta,
           "std_dev_t": st.std_dev_t, "sigma": sig, "ref_mean": ref_mean}
    return out, st, v, rec


def _avg(stats: list[dict[str, float]], key: str) -> float:
    vals = [s[key] for s in stats if key in s and math.isfinite(s[key])]
    return sum(vals) / len(vals) if vals else math.nan


@torch.no_grad()
def _per_step_stats(rows_mb: list[dict[str, torch.Tensor]], ro: Rollout, c: RunConfig, log_prob_form: str):
    """§8 statistics of each denoising step j over all rows trained at j this epoch. Latent-sized
    tensors are gathered per step (never all rows at once): the epoch's peak stays the update's."""
    reweight = bool(c.grad_reweight) and c.delta != "none"
    if not rows_mb:
        return {}, {}
    big = ("mean", "ref_mean")
    cat = {k: torch.cat([r[k] for r in rows_mb]) for k in rows_mb[0]
           if rows_mb[0][k] is not None and k not in big}
    out: dict[int, dict[str, float]] = {}
    sigma_dt: dict[int, tuple[float, float]] = {}
    for j in cat["j"].unique().tolist():
        sel = cat["j"] == j
        ti, si = cat["ti"][sel], cat["si"][sel]
        per = {k: torch.cat([r[k][r["j"] == j] for r in rows_mb]) for k in big if rows_mb[0][k] is not None}
        res = policy_loss(cat["lp"][sel], cat["old_lp"][sel], cat["adv"][sel], clip_range=c.clip_range,
                          ratio_norm=c.ratio_norm, grad_reweight=reweight, mean=per["mean"],
                          old_mean=ro.mean[ti, si], std=cat["std"][sel], dt=cat["dt"][sel],
                          delta=c.delta if reweight else "inv_dt", beta=cat["beta"][sel],
                          prev_sample=ro.x_next[ti, si], kl_beta=0.0, ref_mean=per.get("ref_mean"),
                          std_dev_t=cat["std_dev_t"][sel], adv_clip=c.adv_clip, log_prob_form=log_prob_form,
                          compute_stats=True, validate=False)
        out[j] = dict(res.stats)
        out[j][M.DELTA] = float(res.delta.double().mean())
        out[j][M.ROWS] = float(sel.sum())
        sigma_dt[j] = (float(cat["sigma"][sel][0]), float(cat["dt"][sel][0]))
    return out, sigma_dt


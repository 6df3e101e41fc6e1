"""The training loop: ``train(config, recorder, control)``.

Which objective runs (ALGORITHM.md §3–§4), chosen by the config alone:
- Flow-GRPO: PPO clipped surrogate on the per-dim-mean ratio r = exp(log p_θ − log p_old), group
  advantages (global std), optional KL to the base model (β_KL·KL, §3.3).
- GRPO-Guard: the same surrogate on RatioNorm's r̂ = exp(mean_D[ε ⊙ (μ_θ − μ_old)]) (clean form,
  per-sample bias, §4.2), each step's loss weighted by δ = 1/|dt| (§4.3), group-std advantages, no KL.

Per epoch: sample a group per prompt with the SDE sampler (keeping x_j, x', μ_old, log p_old, σ_j,
σ_{j+1} for every trained step) → score with the proxy rewards → group advantages, dropping
zero-advantage samples → one forward+backward per micro-batch over all its trained steps, one AdamW
step per ``gradient_accumulation_steps`` micro-batches → EMA → record → evaluate / checkpoint on a
cadence → poll control.

Data parallel (``num_gpus`` > 1, one process per GPU under ``accelerate launch``; see
``grpo_guard.training.distributed``): every rank draws the same epoch (prompts, noise, trained steps), samples
and scores only its own prompt groups, and gathers the rewards before the advantages, so every rank
computes the advantages of the whole batch and keeps its slice. Gradients are averaged over the ranks
before each clip + AdamW step (the weights stay identical; LoRA init is broadcast from rank 0). Only
rank 0 records, evaluates and checkpoints; its stop request is broadcast, so the group stops together
(a shutdown too: ``grpo_guard.training.interrupt``).
With one process, every step is exactly the single-GPU trainer. Sharded weights (``parallelism: fsdp``,
``grpo_guard.training.sharding``): the transformer is split over the ranks, so every rank samples in
lockstep (equal shares of groups), runs the evaluations with rank 0 (only rank 0 scores golds and
records) and helps gather each checkpoint, which rank 0 writes in the single-process format; a
shutdown is then only acted on where all ranks are (after sampling, before and in the update,
after recording), never by one rank alone inside a sharded forward.

Deliberately left out: DanceGRPO's per-sample random step subsets are supported but untested at
scale; no learning-rate schedule (Flow-GRPO uses a constant rate); the "hacking step" probe of §8 and
the r̂ histogram are not logged.

Every random stream is derived from (seed, epoch, purpose), so a run resumed from a checkpoint logs
exactly what the uninterrupted run logs. The step index of every row is the epoch (0 = base model).

Where the pieces live: ``train()`` below is the loop; each epoch stage is a function after it. Setting
a run up (rewards, backbone, optimizer, the starting state) is ``grpo_guard.training.setup``. The
live objects of a run and its eval and checkpoint steps are in ``grpo_guard.training.train_run``, the state
carried between epochs (and checkpointed) in ``grpo_guard.training.train_state``, the policy update in
``grpo_guard.training.update``, and the names of every logged metric in ``grpo_guard.metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.planning.runtime import resolve_rows_per_forward
from grpo_guard.policy import group_advantages, zero_variance_mask
from grpo_guard.training import distributed as ddp
from grpo_guard.training.checkpoint import load_checkpoint
from grpo_guard.training.evaluation import fatal_reward_failures_logged, reward_health, score_images
from grpo_guard.training.interrupt import Interrupted, PreUpdateSnapshot, interrupt_requested
from grpo_guard.training.recording import Control, NullRecorder, Recorder, StepStat
from grpo_guard.training.rollout import (
    INIT_NOISE,
    PROMPTS,
    SHUFFLE,
    STEP_NOISE,
    TIMESTEPS,
    Rollout,
    derive_generator,
    sample_rollouts,
    trained_steps,
)
from grpo_guard.training.setup import (
    build_run,
    check_world,
    out_of_memory_error,
    resume_config,
    start_state,
)
from grpo_guard.training.threads import govern
from grpo_guard.training.train_run import (
    TrainRun,
    checkpoint_at,
    evaluate_at,
    stop_for_interrupt,
    stop_on_alarm,
)
from grpo_guard.training.train_state import TrainerState
from grpo_guard.training.update import UpdateResult, micro_batches, policy_update


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled"]
    step: int                       # epochs completed
    last_checkpoint: str | None     # path of the last checkpoint written (or resumed from)


@dataclass
class EpochSamples:
    """One epoch's samples on this rank (one process holds all N = prompts_per_epoch × group_size rows)."""

    prompts: list[str]            # (G,) the epoch's prompts, one per group
    prompt_index: torch.Tensor    # (N,) group id of every row of the epoch
    my_index: torch.Tensor        # (N_r,) group ids of this rank's rows
    rollout: Rollout              # this rank's trajectories
    images: np.ndarray            # (N_r, H, W, 3) uint8


@dataclass
class EpochRewards:
    scores: dict[str, np.ndarray]  # name -> (N,) float64, every row of the epoch (gathered over ranks)
    total: np.ndarray              # (N,) float64, Σ_k w_k·R_k
    sizes: list[int] | None        # rows per rank (data parallel only)


@dataclass
class EpochAdvantages:
    whole: torch.Tensor            # (N,) float32, the whole batch's advantages
    mine: torch.Tensor             # (N_r,) this rank's slice
    zero_groups: torch.Tensor      # (G,) bool, groups whose rewards are all equal
    batches: list[torch.Tensor]    # micro-batches of row indices into this rank's rollout


def train(config: RunConfig, recorder: Recorder, control: Control, *, resume_from: str | None = None,
          device: str | None = None, backbone=None, rewards: Mapping[str, object] | None = None) -> TrainResult:
    """Train ``config`` to ``config.epochs`` epochs, reporting through ``recorder`` and obeying
    ``control``. ``backbone`` and ``rewards`` (name -> reward callable) may be injected (tests,
    workers that keep a model loaded); otherwise they are built from the config.

    Inside a launched process group (``accelerate launch``, WORLD_SIZE > 1) this process is one
    rank of a data-parallel run: ranks other than 0 ignore ``recorder`` and ``control``."""
    # 0. Data parallel: join the launcher's group (a no-op for a single process).
    rank, world = ddp.init_from_env()
    check_world(config.world_size(), world)
    if world > 1:
        device = ddp.rank_device() or device
        if rank != 0:  # one writer: rank 0 records everything, the other ranks keep nothing
            recorder = NullRecorder()

    # 1. Resume: the checkpoint fixes the architecture; the caller's config the rest.
    ckpt = load_checkpoint(resume_from) if resume_from else None
    if ckpt is not None:
        config = resume_config(config, ckpt, recorder)
    c = config

    # 2. Rewards, model, optimizer, EMA, prompts, sigma tables, the fixed eval set.
    run = build_run(c, recorder, rank, world, device, backbone, rewards)
    # A shutdown: each rank asks its own control while it samples (the ranks then agree, below) and
    # rank 0 in its eval and after recording (its alone); where every rank is, rank 0's answer is
    # broadcast (``together``; None: rank 0's control never reports one, so no rank stops early).
    # With sharded weights each sampling and eval forward is a collective: no rank cuts one short alone.
    together = _interrupt_check(run, control)
    run.should_stop = (lambda: interrupt_requested(control)) \
        if not run.sharded and (run.is_main or together) else None
    govern(run.backbone.transformer, run.backbone.device)  # torch threads follow the CPU left free

    # 2b. Rows per forward of the update: the config's number, or `auto`'s pick for this GPU.
    rows_per_forward, how = resolve_rows_per_forward(c, run.backbone.device)
    if run.is_main:
        recorder.log_line(how)

    # 3. Trainer state (all of it goes into checkpoints): fresh with the base model's eval, or resumed
    #    (a run interrupted before the eval its last epoch owed does that eval first).
    state, start, last_path = start_state(run, ckpt)
    try:
        if ckpt is None and run.collective:
            evaluate_at(run, state, 0)
            if c.on_overoptimization == "stop_keep_best":  # the base model may stay the best: keep it too
                last_path = checkpoint_at(run, state, 0, "best-gold")
            recorder.log_scalars(0, reward_health(run.golds, run.proxies))
            recorder.flush()
        elif run.collective and start > state.last_eval and (start % c.eval_every == 0 or start == c.epochs):
            evaluate_at(run, state, start)
            recorder.flush()
    except Interrupted:
        return _interrupt_cut(run, state, start, last_path, alone=True)

    # 4. The loop: one epoch = one step.
    for epoch in range(start + 1, c.epochs + 1):
        # 4a. Poll control once per step (rank 0 polls, every rank obeys).
        if _stop_requested(run, control):
            if run.collective and state.last_ckpt_step != epoch - 1:
                last_path = checkpoint_at(run, state, epoch - 1, "stop")
            recorder.log_line(f"stopped on request after epoch {epoch - 1}")
            recorder.flush()
            return TrainResult("cancelled", epoch - 1, last_path)
        if _alarm_stop(run, state):  # on_overoptimization: the run ends here, as if finished
            last_path = stop_on_alarm(run, state, epoch - 1) if run.collective else last_path
            return TrainResult("succeeded", epoch - 1, last_path)
        t0 = time.perf_counter()

        # 4b. Sample a group per prompt with the SDE sampler.
        try:
            samples: EpochSamples | None = _sample(run, epoch)
        except Interrupted:  # nothing of this epoch is applied or recorded yet
            samples = None
        except torch.OutOfMemoryError as e:
            raise out_of_memory_error(run, "sampling", epoch) from e
        if _any_rank_cut(run, control, together, samples is None):
            return _interrupt_cut(run, state, epoch - 1, last_path)
        t_sample = time.perf_counter()

        # 4c. Score with the proxy rewards, gathered over the ranks.
        with fatal_reward_failures_logged(recorder, epoch, run.proxies, run.golds):  # then the run fails
            scored = _score(run, samples)
        t_reward = time.perf_counter()

        # 4d. Group advantages over the whole batch; zero-advantage samples are dropped (§3.1).
        adv = _advantages(run, samples, scored, epoch)

        # 4e. Policy update, per denoising step, with accumulation (gradients averaged over ranks).
        #     A shutdown before or during it stops at the previous epoch, whose state is intact.
        if together is not None and together():
            return _interrupt_cut(run, state, epoch - 1, last_path)
        # (every rank takes it or none: the parameter count is the same, so is ``together``)
        snapshot = PreUpdateSnapshot.take(run.params, run.optimizer, run.ema, state) if together else None
        try:
            upd = policy_update(run.backbone, run.optimizer, run.params, samples.rollout,
                                adv.mine.to(run.backbone.device), adv.batches, c, run.ema, state,
                                grad_sync=ddp.all_reduce_grads if world > 1 and not run.sharded else None,
                                lockstep=run.sharded, rows_per_forward=rows_per_forward,
                                should_abort=together if snapshot else None)
        except torch.OutOfMemoryError as e:
            raise out_of_memory_error(run, "policy update", epoch) from e
        except Interrupted:
            snapshot.restore(run.params, run.optimizer, run.ema, state)
            return _interrupt_cut(run, state, epoch - 1, last_path)
        if world > 1:
            upd.scalars, upd.step_stats, upd.sigma = ddp.merge_update_stats(upd.scalars, upd.step_stats, upd.sigma)
        t_update = time.perf_counter()

        # 4f. Record.
        _record(run, epoch, upd, scored, adv, (t0, t_sample, t_reward, t_update))

        # 4g. Evaluate, checkpoint, and obey the sample-now / save-now flags (rank 0 alone; every
        #     rank with sharded weights, on rank 0's flags). A shutdown now keeps the epoch; the
        #     eval it owes runs when the run resumes (step 3).
        if not run.collective:
            continue
        if (together is not None and together()) if run.sharded else interrupt_requested(control):
            return _interrupt_cut(run, state, epoch, last_path, alone=not run.sharded)
        sample_now, save_now = (control.take_sample_now(), control.take_save_now()) if run.is_main else (False, False)
        if run.sharded:
            sample_now, save_now = ddp.broadcast_flag(sample_now), ddp.broadcast_flag(save_now)
        try:
            if epoch % c.eval_every == 0 or epoch == c.epochs or sample_now:
                evaluate_at(run, state, epoch)
        except Interrupted:  # the epoch is recorded; its eval runs first on resume
            return _interrupt_cut(run, state, epoch, last_path, alone=True)
        new_best = state.best_step == epoch  # golds are scored on rank 0 alone: its answer counts
        new_best = ddp.broadcast_flag(new_best) if run.sharded else new_best
        if epoch % c.checkpoint_every == 0 or epoch == c.epochs or new_best or save_now:
            reason = "best-gold" if new_best else "periodic" if epoch < c.epochs else "final"
            last_path = checkpoint_at(run, state, epoch, reason)
        recorder.log_scalars(epoch, reward_health(run.proxies, run.golds))  # reward servers: latency, failures
        recorder.flush()

    # 5. Done (a resumed, already finished run lands here directly).
    if not run.collective:
        return TrainResult("succeeded", c.epochs, last_path)
    if state.last_eval != c.epochs:
        evaluate_at(run, state, c.epochs)
    if state.last_ckpt_step != c.epochs:
        last_path = checkpoint_at(run, state, c.epochs, "final")
    recorder.set_progress(c.epochs, c.epochs)
    recorder.log_line(f"finished {c.epochs} epochs")
    recorder.flush()
    return TrainResult("succeeded", c.epochs, last_path)


# ---- the stages of one epoch -----------------------------------------------------------------------
def _stop_requested(run: TrainRun, control: Control) -> bool:
    """Rank 0's answer, broadcast so that every rank stops after the same epoch."""
    stop = control.stop_requested() if run.is_main else False
    return ddp.broadcast_flag(stop) if run.world > 1 else stop


def _interrupt_check(run: TrainRun, control: Control) -> Callable[[], bool] | None:
    """The shutdown check at the points every rank reaches together (before the update, between its
    micro-batches): no database read; with several ranks, rank 0's answer broadcast, so the group
    stops at the same micro-batch. None when rank 0's control cannot report a shutdown (asked once,
    broadcast, so every rank makes the same collectives)."""
    can = hasattr(control, "interrupted") if run.is_main else False
    if run.world == 1:
        return (lambda: interrupt_requested(control)) if can else None
    if not ddp.broadcast_flag(can):
        return None
    return lambda: ddp.broadcast_flag(interrupt_requested(control) if run.is_main else False)


def _any_rank_cut(run: TrainRun, control: Control, together: Callable[[], bool] | None, cut: bool) -> bool:
    """After sampling: whether the epoch stops for a shutdown. Each rank may have cut its own
    sampling short (its chunk counts differ, so no collective runs inside it); with several ranks
    they agree here, every rank stopping if any did or if a shutdown is reported now."""
    if run.world == 1 or together is None:
        return cut
    return ddp.max_over_ranks(int(cut or interrupt_requested(control))) > 0


def _interrupt_cut(run: TrainRun, state: TrainerState, step: int, last_path: str | None, *,
                   alone: bool = False) -> TrainResult:
    """End the run for a shutdown with the state of ``step``: rank 0 checkpoints it. Where rank 0
    stopped ``alone`` (its eval, or after recording), the other ranks already wait in the next
    epoch's stop poll: answer it with a stop, so the group leaves together (after the last epoch
    they are past the loop and leave on their own)."""
    if run.sharded:  # the ranks agreed on the cut, so all are here and gather the checkpoint together
        path = stop_for_interrupt(run, state, step)
        return TrainResult("cancelled", step, (path or last_path) if run.is_main else last_path)
    if not run.is_main:
        return TrainResult("cancelled", step, last_path)
    last_path = stop_for_interrupt(run, state, step) or last_path
    if alone and run.world > 1 and step < run.config.epochs:
        ddp.broadcast_flag(True)
    return TrainResult("cancelled", step, last_path)


def _alarm_stop(run: TrainRun, state: TrainerState) -> bool:
    """Whether the run stops because its over-optimisation alarm fired (``on_overoptimization``
    other than continue); rank 0's answer, broadcast like a stop request."""
    if run.config.on_overoptimization == "continue":
        return False
    fired = state.onset is not None if run.is_main else False
    return ddp.broadcast_flag(fired) if run.world > 1 else fired


def _sample(run: TrainRun, epoch: int) -> EpochSamples:
    """Draw the epoch's prompts, initial noise and trained steps (the same on every rank), then
    sample this rank's groups with the SDE sampler and decode them."""
    c, train_prompts, my_rows = run.config, run.train_prompts, run.my_rows
    n_groups = c.prompts_per_epoch
    g = derive_generator(c.seed, epoch, PROMPTS)
    if n_groups <= len(train_prompts):
        chosen = torch.randperm(len(train_prompts), generator=g)[:n_groups]
    else:
        chosen = torch.randint(len(train_prompts), (n_groups,), generator=g)
    prompts = [train_prompts[i] for i in chosen.tolist()]
    prompt_index = torch.arange(n_groups).repeat_interleave(c.group_size)             # (N,)
    noise_ids = prompt_index if c.init_same_noise else torch.arange(len(prompt_index))
    noise = torch.stack([torch.randn(run.latent_shape, generator=derive_generator(c.seed, epoch, INIT_NOISE, int(i)))
                         for i in noise_ids[my_rows]])                                   # (N_r, *L)
    window = None
    g = derive_generator(c.seed, epoch, TIMESTEPS)
    if c.train_timesteps == "window":
        lo, hi = c.sde_window_range
        w0 = int(torch.randint(lo, hi, (1,), generator=g))
        window = (w0, w0 + c.sde_window_size)
    steps = trained_steps(c.train_timesteps, c.num_steps, c.num_trained_steps(), len(prompt_index),
                          window_start=window[0] if window else 0, generator=g)         # (N, S)
    my_index = prompt_index[my_rows]                                                     # (N_r,) group ids
    ro = sample_rollouts(run.backbone, prompts, my_index, run.sigmas, steps[my_rows], noise,
                         seed_keys=(c.seed, epoch, STEP_NOISE), cfg_scale=c.cfg_scale, noise_level=c.noise_level,
                         dynamics=c.dynamics, sde_steps=window, cps_logprob=c.cps_logprob,
                         chunk=c.sample_batch_size, row_ids=my_rows if run.world > 1 else None,
                         should_stop=run.should_stop)
    images = run.backbone.decode(ro.final)                                               # (N_r, H, W, 3) uint8
    return EpochSamples(prompts, prompt_index, my_index, ro, images)


def _score(run: TrainRun, samples: EpochSamples) -> EpochRewards:
    """Score this rank's images with every proxy (R = Σ_k w_k·R_k; weight 0: logged only); with
    several ranks, gather before normalising (§3.1) so every rank sees the whole batch in row order."""
    row_prompts = [samples.prompts[i] for i in samples.my_index.tolist()]
    scores = score_images(samples.images, row_prompts, {k: fn for k, (fn, _) in run.proxies.items()})
    for k, v in scores.items():  # a NaN is a failed score (an unparsed judge answer), never a value to train on
        if not np.isfinite(v).all():
            raise ValueError(f"proxy reward {k!r} gave NaN or inf for {int((~np.isfinite(v)).sum())} of {len(v)} "
                             "images this epoch; nothing of the epoch was recorded (the run resumes from its last "
                             "checkpoint once the reward is fixed)")
    total = sum(w * scores[k] for k, (_, w) in run.proxies.items())                     # (N_r,) float64
    sizes = None
    if run.world > 1:
        total, gathered_ids, sizes = ddp.gather_rewards(total, samples.my_index)
        if not np.array_equal(gathered_ids, samples.prompt_index.numpy()):
            raise RuntimeError("data parallel: the gathered group ids are not the epoch's rows in order")
        scores = {k: ddp.gather_rewards(v) for k, v in scores.items()}
    return EpochRewards(scores, total, sizes)


def _advantages(run: TrainRun, samples: EpochSamples, scored: EpochRewards, epoch: int) -> EpochAdvantages:
    """Group advantages of the whole batch, this rank's slice, and its shuffled micro-batches."""
    c, rank, world = run.config, run.rank, run.world
    rewards_t = torch.from_numpy(np.asarray(scored.total, dtype=np.float64))
    adv_all = group_advantages(rewards_t, samples.prompt_index, std_scope=c.std_scope, clip=c.adv_clip).float()
    zero_groups = zero_variance_mask(rewards_t, samples.prompt_index).view(c.prompts_per_epoch, c.group_size)[:, 0]
    adv = adv_all[ddp.local_slice(scored.sizes, rank)] if world > 1 else adv_all      # (N_r,) this rank's
    keep, dropped = (adv != 0).nonzero().squeeze(1), (adv == 0).nonzero().squeeze(1)
    shuffle = derive_generator(c.seed, epoch, SHUFFLE, *((rank,) if world > 1 else ()))
    batches = micro_batches(keep, dropped, run.num_batches, c.inner_epochs, shuffle)
    if world > 1:  # the same number of micro-batches (so of gradient all-reduces) on every rank
        batches += [torch.zeros(0, dtype=torch.long)] * (ddp.max_over_ranks(len(batches)) - len(batches))
    return EpochAdvantages(adv_all, adv, zero_groups, batches)


def _record(run: TrainRun, epoch: int, upd: UpdateResult, scored: EpochRewards, adv: EpochAdvantages,
            stamps: tuple[float, float, float, float]) -> None:
    """Log the epoch's scalars and per-step statistics; ``stamps`` are the perf_counter times at
    the start of the epoch and after sampling, scoring and the update."""
    c, recorder = run.config, run.recorder
    t0, t_sample, t_reward, t_update = stamps
    scalars = dict(upd.scalars)
    for k, v in scored.scores.items():
        scalars[M.REWARD_MEAN.format(name=k)], scalars[M.REWARD_STD.format(name=k)] = float(v.mean()), float(v.std())
    total = np.asarray(scored.total)                                                      # (N,)
    scalars[M.REWARD_TOTAL_MEAN], scalars[M.REWARD_TOTAL_STD] = float(np.mean(total)), float(np.std(total))
    scalars[M.REWARD_GROUP_STD] = float(total.reshape(c.prompts_per_epoch, c.group_size).std(1).mean())
    scalars[M.ZERO_STD_RATIO] = float(adv.zero_groups.float().mean())
    kept = int((adv.whole != 0).sum())
    scalars[M.ACTUAL_BATCH_SIZE] = float(kept)
    scalars[M.ADV_ABS_MEAN] = float(adv.whole.abs().mean())
    scalars[M.ADV_CLIPPED_FRAC] = float((adv.whole.abs() >= c.adv_clip).float().mean())
    scalars.update({M.TIME_SAMPLE: t_sample - t0, M.TIME_REWARD: t_reward - t_sample,
                    M.TIME_UPDATE: t_update - t_reward})
    recorder.log_step_stats([StepStat(step=epoch, denoise_index=j, sigma=upd.sigma[j][0], dt=upd.sigma[j][1],
                                      stats=s) for j, s in sorted(upd.step_stats.items())])
    recorder.log_scalars(epoch, scalars)
    recorder.set_progress(epoch, c.epochs)
    recorder.log_line(f"epoch {epoch}/{c.epochs}: reward {scalars[M.REWARD_TOTAL_MEAN]:.4f} "
                      f"(±{scalars[M.REWARD_TOTAL_STD]:.4f}), kept {kept}/{len(adv.whole)}, "
                      f"grad_norm {scalars[M.GRAD_NORM]:.3g}, {t_update - t0:.1f}s", "debug")
    recorder.flush()
    t_record = time.perf_counter()
    recorder.log_scalars(epoch, {M.TIME_RECORD: t_record - t_update, M.TIME_EPOCH: t_record - t0})

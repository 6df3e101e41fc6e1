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
``grpo_guard.distributed``): every rank draws the same epoch (prompts, noise, trained steps), samples
and scores only its own prompt groups, and gathers the rewards before the advantages, so every rank
computes the advantages of the whole batch and keeps its slice. Gradients are averaged over the ranks
before each clip + AdamW step (the weights stay identical; LoRA init is broadcast from rank 0). Only
rank 0 records, evaluates and checkpoints; its stop request is broadcast, so the group stops together.
With one process, every step is exactly the single-GPU trainer.

Deliberately left out: DanceGRPO's per-sample random step subsets are supported but untested at
scale; no learning-rate schedule (Flow-GRPO uses a constant rate); the "hacking step" probe of §8 and
the r̂ histogram are not logged.

Every random stream is derived from (seed, epoch, purpose), so a run resumed from a checkpoint logs
exactly what the uninterrupted run logs. The step index of every row is the epoch (0 = base model).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from grpo_guard import distributed as ddp
from grpo_guard.alarm import hacking_onset
from grpo_guard.checkpoint import (
    ARCHITECTURE_KEYS,
    Checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from grpo_guard.config import RunConfig
from grpo_guard.ema import EMA
from grpo_guard.evaluation import EvalSet, evaluate, score_images
from grpo_guard.policy import group_advantages, zero_variance_mask
from grpo_guard.recording import Control, NullRecorder, Recorder, StepStat
from grpo_guard.rollout import (
    INIT_NOISE,
    PROMPTS,
    SHUFFLE,
    STEP_NOISE,
    TIMESTEPS,
    derive_generator,
    sample_rollouts,
    trained_steps,
)
from grpo_guard.update import micro_batches, policy_update


@dataclass
class TrainResult:
    status: Literal["succeeded", "cancelled"]
    step: int                       # epochs completed
    last_checkpoint: str | None     # path of the last checkpoint written (or resumed from)


def train(config: RunConfig, recorder: Recorder, control: Control, *, resume_from: str | None = None,
          device: str | None = None, backbone=None, rewards: Mapping[str, object] | None = None) -> TrainResult:
    """Train ``config`` to ``config.epochs`` epochs, reporting through ``recorder`` and obeying
    ``control``. ``backbone`` and ``rewards`` (name -> reward callable) may be injected (tests,
    workers that keep a model loaded); otherwise they are built from the config.

    Inside a launched process group (``accelerate launch``, WORLD_SIZE > 1) this process is one
    rank of a data-parallel run: ranks other than 0 ignore ``recorder`` and ``control``."""
    # 0. Data parallel: join the launcher's group (a no-op for a single process).
    rank, world = ddp.init_from_env()
    is_main = rank == 0
    if world != config.num_gpus:
        raise ValueError(
            f"num_gpus is {config.num_gpus} but this process group has {world} process(es): "
            + ("run it with `grpo-guard train CONFIG` (which starts accelerate launch with num_gpus processes) "
               "or submit it to a worker that owns that many GPUs" if world == 1 else
               f"launch exactly num_gpus={config.num_gpus} processes"))
    if world > 1:
        device = ddp.rank_device() or device
        if not is_main:  # one writer: rank 0 records everything, the other ranks keep nothing
            recorder = NullRecorder()

    # 1. Resume: the checkpoint fixes the architecture; the caller's config the rest.
    ckpt = None
    if resume_from:
        ckpt = load_checkpoint(resume_from)
        config = _resume_config(config, ckpt, recorder)
    c = config

    # 2. Prompts and rewards first (an unknown set, unreadable file, missing dataset or reward
    # name fails before a model loads), then model, optimizer, EMA. Prompts stay Prompt objects
    # (str with .meta) all the way to the rewards and the recorder.
    train_prompts, eval_prompts = c.resolved_prompts()
    proxies, golds = _build_rewards(c, rewards, golds=is_main)  # eval (golds) runs on rank 0 only
    if backbone is None:
        from grpo_guard.models import build_backbone

        backbone = build_backbone(c, device=device)
    if getattr(backbone, "lora_rank", None) is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # LoRA's Gaussian init
            backbone.add_lora(c.lora_rank, c.lora_alpha, c.lora_targets)
    params = backbone.trainable_parameters()
    if world > 1:
        ddp.broadcast_params(params)
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                  weight_decay=c.weight_decay, eps=c.adam_eps)
    ema = EMA(params, c.ema_decay) if c.ema else None

    # 3. Sigma tables, the fixed eval set.
    latent_shape = backbone.latent_shape(c.resolution)
    sigmas = backbone.sigmas(c.num_steps, c.shift, c.resolution)             # (T+1,)
    eval_sigmas = backbone.sigmas(c.eval_num_steps, c.shift, c.resolution)   # (T_eval+1,)
    eval_set = EvalSet.build(eval_prompts, list(c.eval_seeds), latent_shape)
    n_train = c.num_trained_steps()
    group_size, n_groups = c.group_size, c.prompts_per_epoch
    # This rank's prompt groups (all of them in a single process) and their rows of the epoch.
    my_groups = ddp.shard_indices(n_groups, rank, world)
    my_rows = torch.arange(my_groups[0] * group_size, (my_groups[-1] + 1) * group_size) if my_groups else \
        torch.zeros(0, dtype=torch.long)
    # Micro-batches per rank: from the largest shard, so every rank takes the same optimizer steps.
    num_batches = math.ceil(group_size * len(ddp.shard_indices(n_groups, 0, world)) / c.train_batch_size)

    # 4. Trainer state (all of it goes into checkpoints).
    st = {"optimizer_steps": 0, "history": {"step": [], "proxy": [], "gold": []}, "best_gold": -math.inf,
          "best_step": -1, "onset": None, "last_eval": -1, "last_ckpt_step": -1}
    last_path: str | None = None
    start = 0
    if ckpt is not None:
        backbone.load_trainable_state_dict(ckpt.trainable)
        if ckpt.optimizer:
            optimizer.load_state_dict(ckpt.optimizer)
        if ema is not None and ckpt.ema is not None:
            ema.load(ckpt.ema)
        st.update(ckpt.trainer)
        start, last_path = ckpt.step, ckpt.path
        if start > c.epochs:
            raise ValueError(f"the checkpoint is at epoch {start}, beyond epochs={c.epochs}; set epochs >= {start} to resume")
        recorder.prune_after(start)
        recorder.log_line(f"resumed from {ckpt.path} at epoch {start}")
    else:
        recorder.log_line(f"training {c.algorithm} on {c.backbone}: {c.epochs} epochs of {n_groups}×{group_size} "
                          f"samples, {n_train} of {c.num_steps} steps trained, {sum(p.numel() for p in params):,} "
                          f"trainable parameters")

    def run_eval(step: int) -> None:
        if step in st["history"]["step"]:
            return
        t = time.perf_counter()
        with ema.swapped() if ema is not None else _nullcontext():
            vals = evaluate(backbone, eval_set, eval_sigmas, cfg_scale=c.cfg_scale, proxies=proxies, golds=golds,
                            step=step, recorder=recorder, chunk=c.sample_batch_size)
        h = st["history"]
        h["step"].append(step)
        h["proxy"].append(vals["eval/proxy"])
        h["gold"].append(vals["eval/gold"])
        base = h["gold"][0]
        if math.isfinite(base) and base > 0:
            vals["eval/gold_rel"] = vals["eval/gold"] / base
        if math.isfinite(vals["eval/gold"]) and vals["eval/gold"] > st["best_gold"]:
            st["best_gold"], st["best_step"] = vals["eval/gold"], step
        if st["onset"] is None and golds:
            st["onset"] = hacking_onset(h["step"], h["proxy"], h["gold"])
            if st["onset"] is not None:
                vals["alarm/hacking_onset"] = float(st["onset"])
                recorder.log_line(f"over-optimisation alarm: proxy rising while gold falls since epoch {st['onset']}",
                                  "warning")
        vals["time/eval"] = time.perf_counter() - t
        st["last_eval"] = step
        recorder.log_scalars(step, vals)
        recorder.log_line(f"eval @ {step}: proxy {vals['eval/proxy']:.4f}, gold {vals['eval/gold']:.4f}")

    def save(step: int, reason: str) -> str:
        ck = Checkpoint(step=step, config=c, trainable=backbone.trainable_state_dict(),
                        ema=ema.state() if ema is not None else None, optimizer=optimizer.state_dict(),
                        trainer={**st, "last_ckpt_step": step})
        h = st["history"]
        meta = {"reason": reason, "best_step": st["best_step"], "epochs": c.epochs}
        if step in h["step"]:
            i = h["step"].index(step)
            meta.update({"eval/proxy": h["proxy"][i], "eval/gold": h["gold"][i]})
        path = save_checkpoint(recorder.checkpoint_dir(), ck, meta)
        st["last_ckpt_step"] = step
        recorder.log_checkpoint(step, path, meta)
        prune_checkpoints(recorder.checkpoint_dir(), c.keep_checkpoints, protect={st["best_step"]})
        recorder.log_line(f"checkpoint ({reason}) saved: {path}")
        return path

    if ckpt is None and is_main:
        run_eval(0)
        recorder.flush()

    # 5. The loop: one epoch = one step.
    for epoch in range(start + 1, c.epochs + 1):
        # 5a. Poll control once per step (rank 0 polls, every rank obeys).
        stop = control.stop_requested() if is_main else False
        if world > 1:
            stop = ddp.broadcast_flag(stop)
        if stop:
            if is_main and st["last_ckpt_step"] != epoch - 1:
                last_path = save(epoch - 1, "stop")
            recorder.log_line(f"stopped on request after epoch {epoch - 1}")
            recorder.flush()
            return TrainResult("cancelled", epoch - 1, last_path)
        t0 = time.perf_counter()

        # 5b. Sample a group per prompt with the SDE sampler.
        g = derive_generator(c.seed, epoch, PROMPTS)
        if n_groups <= len(train_prompts):
            chosen = torch.randperm(len(train_prompts), generator=g)[:n_groups]
        else:
            chosen = torch.randint(len(train_prompts), (n_groups,), generator=g)
        prompts = [train_prompts[i] for i in chosen.tolist()]
        prompt_index = torch.arange(n_groups).repeat_interleave(group_size)          # (N,)
        noise_ids = prompt_index if c.init_same_noise else torch.arange(len(prompt_index))
        noise = torch.stack([torch.randn(latent_shape, generator=derive_generator(c.seed, epoch, INIT_NOISE, int(i)))
                             for i in noise_ids[my_rows]])                            # (N_r, *L)
        window = None
        g = derive_generator(c.seed, epoch, TIMESTEPS)
        if c.train_timesteps == "window":
            lo, hi = c.sde_window_range
            w0 = int(torch.randint(lo, hi, (1,), generator=g))
            window = (w0, w0 + c.sde_window_size)
        steps = trained_steps(c.train_timesteps, c.num_steps, n_train, len(prompt_index),
                              window_start=window[0] if window else 0, generator=g)  # (N, S)
        my_index = prompt_index[my_rows]                                              # (N_r,) group ids
        ro = sample_rollouts(backbone, prompts, my_index, sigmas, steps[my_rows], noise,
                             seed_keys=(c.seed, epoch, STEP_NOISE), cfg_scale=c.cfg_scale, noise_level=c.noise_level,
                             dynamics=c.dynamics, sde_steps=window, cps_logprob=c.cps_logprob,
                             chunk=c.sample_batch_size, row_ids=my_rows if world > 1 else None)
        images = backbone.decode(ro.final)                                            # (N, H, W, 3) uint8
        t_sample = time.perf_counter()

        # 5c. Score with the proxy rewards: R = Σ_k w_k·R_k (weight 0: logged only).
        row_prompts = [prompts[i] for i in my_index.tolist()]
        scores = score_images(images, row_prompts, {k: fn for k, (fn, _) in proxies.items()})
        total = sum(w * scores[k] for k, (_, w) in proxies.items())                   # (N_r,) float64
        if world > 1:  # gather before normalising (§3.1): every rank sees the whole batch, in row order
            total, gathered_ids, sizes = ddp.gather_rewards(total, my_index)
            if not np.array_equal(gathered_ids, prompt_index.numpy()):
                raise RuntimeError("data parallel: the gathered group ids are not the epoch's rows in order")
            scores = {k: ddp.gather_rewards(v) for k, v in scores.items()}
        t_reward = time.perf_counter()

        # 5d. Group advantages over the whole batch; zero-advantage samples are dropped (§3.1).
        rewards_t = torch.from_numpy(np.asarray(total, dtype=np.float64))
        adv_all = group_advantages(rewards_t, prompt_index, std_scope=c.std_scope, clip=c.adv_clip).float()
        zero_groups = zero_variance_mask(rewards_t, prompt_index).view(n_groups, group_size)[:, 0]
        adv = adv_all[ddp.local_slice(sizes, rank)] if world > 1 else adv_all           # (N_r,) this rank's
        keep, dropped = (adv != 0).nonzero().squeeze(1), (adv == 0).nonzero().squeeze(1)
        shuffle = derive_generator(c.seed, epoch, SHUFFLE, *((rank,) if world > 1 else ()))
        batches = micro_batches(keep, dropped, num_batches, c.inner_epochs, shuffle)
        if world > 1:  # the same number of micro-batches (so of gradient all-reduces) on every rank
            batches += [torch.zeros(0, dtype=torch.long)] * (ddp.max_over_ranks(len(batches)) - len(batches))

        # 5e. Policy update, per denoising step, with accumulation (gradients averaged over ranks).
        upd = policy_update(backbone, optimizer, params, ro, adv.to(backbone.device), batches, c, ema, st,
                            grad_sync=ddp.all_reduce_grads if world > 1 else None)
        if world > 1:
            upd.scalars, upd.step_stats, upd.sigma = ddp.merge_update_stats(upd.scalars, upd.step_stats, upd.sigma)
        t_update = time.perf_counter()

        # 5f. Record.
        scalars = dict(upd.scalars)
        for k, v in scores.items():
            scalars[f"reward/{k}/mean"], scalars[f"reward/{k}/std"] = float(v.mean()), float(v.std())
        scalars["reward/total/mean"], scalars["reward/total/std"] = float(np.mean(total)), float(np.std(total))
        scalars["reward/group_std/mean"] = float(np.asarray(total).reshape(n_groups, group_size).std(1).mean())
        scalars["zero_std_ratio"] = float(zero_groups.float().mean())
        kept = int((adv_all != 0).sum())
        scalars["actual_batch_size"] = float(kept)
        scalars["adv_abs_mean"] = float(adv_all.abs().mean())
        scalars["adv_clipped_frac"] = float((adv_all.abs() >= c.adv_clip).float().mean())
        scalars.update({"time/sample": t_sample - t0, "time/reward": t_reward - t_sample,
                        "time/update": t_update - t_reward})
        recorder.log_step_stats([StepStat(step=epoch, denoise_index=j, sigma=upd.sigma[j][0], dt=upd.sigma[j][1],
                                          stats=s) for j, s in sorted(upd.step_stats.items())])
        recorder.log_scalars(epoch, scalars)
        recorder.set_progress(epoch, c.epochs)
        recorder.log_line(f"epoch {epoch}/{c.epochs}: reward {scalars['reward/total/mean']:.4f} "
                          f"(±{scalars['reward/total/std']:.4f}), kept {kept}/{len(adv_all)}, "
                          f"grad_norm {scalars['grad_norm']:.3g}, {t_update - t0:.1f}s", "debug")
        recorder.flush()
        t_record = time.perf_counter()
        recorder.log_scalars(epoch, {"time/record": t_record - t_update, "time/epoch": t_record - t0})

        # 5g. Evaluate, checkpoint, and obey the sample-now / save-now flags.
        if not is_main:  # rank 0 alone evaluates and checkpoints
            continue
        sample_now, save_now = control.take_sample_now(), control.take_save_now()
        if epoch % c.eval_every == 0 or epoch == c.epochs or sample_now:
            run_eval(epoch)
        new_best = st["best_step"] == epoch
        if epoch % c.checkpoint_every == 0 or epoch == c.epochs or new_best or save_now:
            last_path = save(epoch, "best-gold" if new_best else "periodic" if epoch < c.epochs else "final")
        recorder.flush()

    # 6. Done (a resumed, already finished run lands here directly).
    if not is_main:
        return TrainResult("succeeded", c.epochs, last_path)
    if st["last_eval"] != c.epochs:
        run_eval(c.epochs)
    if st["last_ckpt_step"] != c.epochs:
        last_path = save(c.epochs, "final")
    recorder.set_progress(c.epochs, c.epochs)
    recorder.log_line(f"finished {c.epochs} epochs")
    recorder.flush()
    return TrainResult("succeeded", c.epochs, last_path)


def _build_rewards(c: RunConfig, injected: Mapping[str, object] | None, *, golds: bool = True):
    from grpo_guard.rewards import build_reward

    injected = dict(injected or {})

    def get(name: str):  # reward_options: local weights, device, batch size (env vars are the fallback)
        return injected[name] if name in injected else build_reward(name, **c.reward_factory_options(name))

    proxies = {k: (get(k), float(w)) for k, w in c.rewards.items()}
    gold = {k: get(k) for k in c.gold} if golds else {}
    return proxies, gold


def _resume_config(config: RunConfig, ckpt: Checkpoint, recorder: Recorder) -> RunConfig:
    """The caller's config with the checkpoint's architecture keys (which shape the weights)."""
    saved = ckpt.config.to_dict()
    if ckpt.filled:
        recorder.log_line(f"checkpoint {ckpt.path} lacks config keys {', '.join(ckpt.filled)}; defaults were used")
    mine = config.to_dict()
    arch = {k: saved[k] for k in ARCHITECTURE_KEYS if mine.get(k) != saved.get(k)}
    if arch:
        recorder.log_line(f"resume: taking {', '.join(sorted(arch))} from the checkpoint", "warning")
        config = config.with_overrides(arch)
    return config


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

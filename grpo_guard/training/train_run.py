"""The live objects of one training run (``TrainRun``) and the two things the loop does on a
cadence with them: evaluate (``evaluate_at``) and checkpoint (``checkpoint_at``). Both run on rank
0 only (on every rank with sharded weights, ``TrainRun.collective``) and update the
``TrainerState`` they are given."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from grpo_guard.experiments.alarm import hacking_onset
from grpo_guard.models.base import Backbone
from grpo_guard.training import sharding
from grpo_guard.training.checkpoint import Checkpoint, checkpoint_path, prune_checkpoints, save_checkpoint
from grpo_guard.training.ema import EMA
from grpo_guard.training.evaluation import EvalSet, evaluate, fatal_reward_failures_logged
from grpo_guard.training.recording import Recorder
from grpo_guard.training.train_state import TrainerState


@dataclass
class TrainRun:
    """Everything the loop reads but never reassigns, built once before the first epoch."""

    config: RunConfig
    recorder: Recorder                  # a NullRecorder on ranks other than 0
    rank: int
    world: int
    backbone: Backbone
    params: list[torch.nn.Parameter]    # the trainable (LoRA) parameters
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    proxies: Mapping[str, tuple[object, float]]  # name -> (reward fn, weight)
    golds: Mapping[str, object]                  # name -> gold evaluator (empty off rank 0)
    train_prompts: list[str]
    latent_shape: tuple[int, ...]
    sigmas: torch.Tensor                # (T+1,) training sampler
    eval_sigmas: torch.Tensor           # (T_eval+1,) eval sampler
    eval_set: EvalSet
    my_rows: torch.Tensor               # (N_r,) this rank's rows of the epoch (all rows in one process)
    num_batches: int                    # micro-batches per inner epoch, the same on every rank
    should_stop: Callable[[], bool] | None = None  # a shutdown of this single process (interrupt.py)
    sharded: bool = False               # parallelism fsdp over several ranks: the transformer is sharded

    @property
    def collective(self) -> bool:
        """Whether every rank takes part in evaluations and checkpoints: with sharded weights each
        forward gathers the weights from all ranks, and a checkpoint gathers them whole."""
        return self.is_main or self.sharded

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def evaluate_at(run: TrainRun, state: TrainerState, step: int) -> None:
    """Evaluate the EMA weights on the fixed eval set at ``step`` (once per step), update the best
    gold and the over-optimisation alarm, and record the ``eval/*`` scalars."""
    if step in state.history.step:
        return
    c, recorder = run.config, run.recorder
    t = time.perf_counter()
    with run.ema.swapped() if run.ema is not None else contextlib.nullcontext(), \
            fatal_reward_failures_logged(recorder, step, run.golds, run.proxies):
        vals = evaluate(run.backbone, run.eval_set, run.eval_sigmas, cfg_scale=c.cfg_scale, proxies=run.proxies,
                        golds=run.golds, step=step, recorder=recorder, chunk=c.sample_batch_size,
                        should_stop=run.should_stop)
    proxy, gold = vals[M.EVAL_PROXY], vals[M.EVAL_GOLD]
    h = state.history
    h.add(step, proxy, gold)
    if math.isfinite(h.gold[0]) and h.gold[0] > 0:
        vals[M.EVAL_GOLD_REL] = gold / h.gold[0]
    if math.isfinite(gold) and gold > state.best_gold:
        state.best_gold, state.best_step = gold, step
    if state.onset is None and run.golds:
        state.onset = hacking_onset(h.step, h.proxy, h.gold)
        if state.onset is not None:
            vals[M.ALARM_ONSET] = float(state.onset)
            recorder.log_line(f"over-optimisation alarm: proxy rising while gold falls since epoch {state.onset}",
                              "warning")
    vals[M.TIME_EVAL] = time.perf_counter() - t
    state.last_eval = step
    recorder.log_scalars(step, vals)
    recorder.log_line(f"eval @ {step}: proxy {proxy:.4f}, gold {gold:.4f}")


def checkpoint_at(run: TrainRun, state: TrainerState, step: int, reason: str) -> str | None:
    """Write the checkpoint of ``step`` (weights, EMA, optimizer, ``state``), record it, prune the
    old ones (never the best-gold one) and return its path. With sharded weights every rank calls
    it (the weights are gathered); ranks other than 0 write nothing and return None."""
    c, recorder = run.config, run.recorder
    if run.sharded:  # every rank gathers, tensor by tensor; rank 0 keeps the whole state and writes it
        keep = run.is_main
        trainable = sharding.full_trainable_state(run.backbone, keep)
        ema = [sharding.full(s, keep) for s in run.ema.shadow] if run.ema is not None else None
        optimizer = sharding.full_optimizer_state(run.optimizer, keep)
        if not keep:
            state.last_ckpt_step = step
            return None
    else:
        trainable, optimizer = run.backbone.trainable_state_dict(), run.optimizer.state_dict()
        ema = run.ema.state() if run.ema is not None else None
    ck = Checkpoint(step=step, config=c, trainable=trainable, ema=ema, optimizer=optimizer,
                    trainer={**state.to_dict(), "last_ckpt_step": step})
    meta = {"reason": reason, "best_step": state.best_step, "epochs": c.epochs}
    evaluated = state.history.at(step)
    if evaluated is not None:
        meta.update({M.EVAL_PROXY: evaluated[0], M.EVAL_GOLD: evaluated[1]})
    path = save_checkpoint(recorder.checkpoint_dir(), ck, meta)
    state.last_ckpt_step = step
    recorder.log_checkpoint(step, path, meta)
    prune_checkpoints(recorder.checkpoint_dir(), c.keep_checkpoints, protect={state.best_step})
    recorder.log_line(f"checkpoint ({reason}) saved: {path}")
    return path


def stop_on_alarm(run: TrainRun, state: TrainerState, step: int) -> str | None:
    """End the run after ``step`` because its over-optimisation alarm fired (``on_overoptimization``
    stop / stop_keep_best): checkpoint ``step``, and with stop_keep_best mark the best-gold
    checkpoint (``meta["best"]``, what ``grpo-guard runs best`` prints). Returns the last path."""
    c, recorder = run.config, run.recorder
    path = checkpoint_at(run, state, step, "overoptimization") if state.last_ckpt_step != step else None
    if not run.is_main:  # a sharded run's other ranks only helped gather the checkpoint
        return None
    recorder.log_line(f"stopped after epoch {step}: the over-optimisation alarm fired at epoch {state.onset} "
                      f"(on_overoptimization: {c.on_overoptimization})", "warning")
    best = checkpoint_path(recorder.checkpoint_dir(), state.best_step) if state.best_step >= 0 else None
    if c.on_overoptimization == "stop_keep_best" and best is not None and os.path.exists(best):
        evaluated = state.history.at(state.best_step)
        meta = {"reason": "best-gold", "best_step": state.best_step, "epochs": c.epochs, "best": True}
        if evaluated is not None:
            meta.update({M.EVAL_PROXY: evaluated[0], M.EVAL_GOLD: evaluated[1]})
        recorder.log_checkpoint(state.best_step, best, meta)
        recorder.log_line(f"best-gold checkpoint kept: epoch {state.best_step} (gold {state.best_gold:.4f}): {best}")
    recorder.flush()
    return path or (checkpoint_path(recorder.checkpoint_dir(), step))


def stop_for_interrupt(run: TrainRun, state: TrainerState, step: int) -> str | None:
    """The process is shutting down (``grpo_guard.training.interrupt``): checkpoint ``step`` unless
    it is the last checkpoint already; returns the new path, or None."""
    path = checkpoint_at(run, state, step, "interrupt") if state.last_ckpt_step != step else None
    run.recorder.log_line(f"shutting down: stopped with the state of epoch {step} checkpointed", "warning")
    run.recorder.flush()
    return path

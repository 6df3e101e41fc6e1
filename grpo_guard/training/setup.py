"""Setting a run up: the live objects of a run from its config (prompts and rewards vetted before any
model loads, the backbone with its LoRA, the optimizer, the eval set, this rank's share of the
groups), the state a run starts from (fresh, or a checkpoint's), and the out-of-memory message."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from grpo_guard.config import RunConfig
from grpo_guard.planning.runtime import GpuOutOfMemory, out_of_memory_message
from grpo_guard.training import distributed as ddp
from grpo_guard.training.checkpoint import ARCHITECTURE_KEYS, Checkpoint
from grpo_guard.training.ema import EMA
from grpo_guard.training.evaluation import EvalSet
from grpo_guard.training.recording import Recorder
from grpo_guard.training.sharding import load_trainable_state, shard_transformer, sharded_optimizer_state
from grpo_guard.training.train_run import TrainRun
from grpo_guard.training.train_state import TrainerState


def out_of_memory_error(run: TrainRun, phase: str, epoch: int) -> GpuOutOfMemory:
    """The OOM as one message with the plan's figures and a setting that fits (the run ends failed and
    resumes from its last checkpoint)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return GpuOutOfMemory(out_of_memory_message(run.config, phase, epoch, run.backbone.device))


def check_world(ranks: int, world: int) -> None:
    """The launched process group has exactly the run's ``num_nodes × num_gpus`` ranks."""
    if world != ranks:
        raise ValueError(
            f"the run needs num_nodes × num_gpus = {ranks} process(es) but this process group has {world}: "
            + ("run it with `grpo-guard train CONFIG` (which starts accelerate launch with num_gpus processes) "
               "or submit it to a worker that owns that many GPUs" if world == 1 else
               f"launch exactly {ranks} processes in all"))


def build_run(c: RunConfig, recorder: Recorder, rank: int, world: int, device: str | None, backbone,
               rewards: Mapping[str, object] | None) -> TrainRun:
    # Prompts and rewards first: an unknown set, unreadable file, missing dataset, reward name or
    # GenEval metadata fails before a model loads. Prompts stay Prompt objects (str with .meta) all
    # the way to the rewards and the recorder. Eval (golds) runs on rank 0 only.
    train_prompts, eval_prompts = c.resolved_prompts()
    proxies, golds = build_rewards(c, rewards, golds=rank == 0)
    check_reward_prompts(proxies, golds, train_prompts, eval_prompts)
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
    sharded = world > 1 and c.parallelism == "fsdp"
    if sharded:  # the optimizer and the EMA are built over the shards (DTensors)
        shard_transformer(backbone, c.mixed_precision, c.fsdp_cpu_offload)
        params = backbone.trainable_parameters()
        offload = c.fsdp_cpu_offload and backbone.device.type == "cuda"
        recorder.log_line(f"fsdp: the transformer is sharded over {world} ranks"
                          + (", its shards kept in host memory" if offload else "")
                          + ("; fsdp_cpu_offload does nothing on the CPU" if c.fsdp_cpu_offload and not offload else ""))
    elif c.parallelism == "fsdp":
        recorder.log_line("parallelism fsdp with a single process: nothing to shard, the run trains unsharded")
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                  weight_decay=c.weight_decay, eps=c.adam_eps)

    # Sigma tables, the fixed eval set.
    latent_shape = backbone.latent_shape(c.resolution)
    eval_set = EvalSet.build(eval_prompts, list(c.eval_seeds), latent_shape)

    # This rank's prompt groups (all of them in a single process) and their rows of the epoch.
    group_size, n_groups = c.group_size, c.prompts_per_epoch
    my_groups = ddp.shard_indices(n_groups, rank, world)
    my_rows = torch.arange(my_groups[0] * group_size, (my_groups[-1] + 1) * group_size) if my_groups else \
        torch.zeros(0, dtype=torch.long)
    # Micro-batches per rank: from the largest shard, so every rank takes the same optimizer steps.
    num_batches = math.ceil(group_size * len(ddp.shard_indices(n_groups, 0, world)) / c.train_batch_size)
    return TrainRun(config=c, recorder=recorder, rank=rank, world=world, backbone=backbone, params=params,
                    optimizer=optimizer, ema=EMA(params, c.ema_decay) if c.ema else None, proxies=proxies,
                    golds=golds, train_prompts=train_prompts, latent_shape=latent_shape,
                    sigmas=backbone.sigmas(c.num_steps, c.shift, c.resolution),
                    eval_sigmas=backbone.sigmas(c.eval_num_steps, c.shift, c.resolution), eval_set=eval_set,
                    my_rows=my_rows, num_batches=num_batches, sharded=sharded)


def check_reward_prompts(proxies: Mapping[str, tuple[object, float]], golds: Mapping[str, object],
                          train_prompts: list, eval_prompts: list) -> None:
    """Rewards that read per-prompt data (GenEval's metadata: ``check_prompts``) vet the prompts
    they will score now, with one sentence, before a model or the reward's weights load."""
    for fn, _ in proxies.values():
        if callable(check := getattr(fn, "check_prompts", None)):
            check([*train_prompts, *eval_prompts])
    for fn in golds.values():
        if callable(check := getattr(fn, "check_prompts", None)):
            check(eval_prompts)


def start_state(run: TrainRun, ckpt: Checkpoint | None) -> tuple[TrainerState, int, str | None]:
    """(state, first epoch - 1, last checkpoint path): a fresh state at epoch 0, or the checkpoint's
    weights, optimizer, EMA and trainer state at its epoch, with everything logged after it pruned."""
    c, recorder = run.config, run.recorder
    if ckpt is None:
        recorder.log_line(f"training {c.algorithm} on {c.backbone}: {c.epochs} epochs of {c.prompts_per_epoch}×"
                          f"{c.group_size} samples, {c.num_trained_steps()} of {c.num_steps} steps trained, "
                          f"{sum(p.numel() for p in run.params):,} trainable parameters")
        return TrainerState(), 0, None
    if run.sharded:  # every rank reads the whole state and keeps its shard
        load_trainable_state(run.backbone, ckpt.trainable)
        if ckpt.optimizer:
            run.optimizer.load_state_dict(sharded_optimizer_state(ckpt.optimizer, run.params))
    else:
        run.backbone.load_trainable_state_dict(ckpt.trainable)
        if ckpt.optimizer:
            run.optimizer.load_state_dict(ckpt.optimizer)
    if run.ema is not None and ckpt.ema is not None:
        run.ema.load(ckpt.ema)
    if ckpt.step > c.epochs:
        raise ValueError(f"the checkpoint is at epoch {ckpt.step}, beyond epochs={c.epochs}; "
                         f"set epochs >= {ckpt.step} to resume")
    recorder.prune_after(ckpt.step)
    recorder.log_line(f"resumed from {ckpt.path} at epoch {ckpt.step}")
    return TrainerState.from_dict(ckpt.trainer), ckpt.step, ckpt.path


def build_rewards(c: RunConfig, injected: Mapping[str, object] | None, *, golds: bool = True):
    from grpo_guard.rewards import build_reward

    injected = dict(injected or {})

    def get(name: str):  # reward_options: local weights, device, batch size (env vars are the fallback)
        return injected[name] if name in injected else build_reward(name, **c.reward_factory_options(name))

    proxies = {k: (get(k), float(w)) for k, w in c.rewards.items()}
    gold = {k: get(k) for k in c.gold} if golds else {}
    return proxies, gold


def resume_config(config: RunConfig, ckpt: Checkpoint, recorder: Recorder) -> RunConfig:
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

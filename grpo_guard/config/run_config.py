"""RunConfig: every knob of a run, validated, with a YAML/JSON round trip.

Imports no torch (the app uses this module). Field help is written once, in each field's
``description``; it feeds ``grpo-guard train --help``-style listings, the New-run form and
the docs. Fields are flat (``--set key=value`` works for all of them) and each carries a
``group`` used to lay the form out in sections.

Defaults that depend on the algorithm (noise level, clip range, KL weight, advantage std scope,
learning rate, dynamics, RatioNorm and reweighting) are ``None`` in the schema and are filled by
``RunConfig`` from :data:`ALGORITHM_DEFAULTS` (ALGORITHM.md §5), so a config that names only the
algorithm gets the paper's settings, and ``fields_set()`` still tells what the user chose.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grpo_guard.config import safe_yaml, submission
from grpo_guard.config.errors import ConfigError, ErrorBundle, format_errors
from grpo_guard.config.safe_yaml import apply_overrides, parse_overrides
from grpo_guard.config.submission import prompt_file_path, prompt_file_problem  # noqa: F401  (re-exported)

Backbone = Literal["toy", "sd3", "flux"]
Algorithm = Literal["flow_grpo", "grpo_guard", "dance_grpo", "dance_grpo_guard"]
Dynamics = Literal["flow_grpo", "dance_grpo", "cps", "ode"]

ALGORITHMS: tuple[str, ...] = ("flow_grpo", "grpo_guard", "dance_grpo", "dance_grpo_guard")
BACKBONES: tuple[str, ...] = ("toy", "sd3", "flux")

# ALGORITHM.md §5.1 / §5.2 (clip ranges for the toy backbone are rescaled by √(D_paper/D_toy),
# TOYWORLD.md "Clip ranges per scale"; those are applied per backbone below).
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "flow_grpo": dict(dynamics="flow_grpo", noise_level=0.7, clip_range=1e-4, kl_beta=0.04,
                      std_scope="global", learning_rate=3e-4, ratio_norm=False, grad_reweight=False,
                      delta="none", train_timesteps="first", init_same_noise=False),
    "grpo_guard": dict(dynamics="flow_grpo", noise_level=0.7, clip_range=2e-6, kl_beta=0.0,
                       std_scope="group", learning_rate=1e-4, ratio_norm=True, grad_reweight=True,
                       delta="inv_dt", train_timesteps="first", init_same_noise=False),
    "dance_grpo": dict(dynamics="dance_grpo", noise_level=0.3, clip_range=1e-4, kl_beta=0.0,
                       std_scope="global", learning_rate=3e-4, ratio_norm=False, grad_reweight=False,
                       delta="none", train_timesteps="random", init_same_noise=True),
    "dance_grpo_guard": dict(dynamics="dance_grpo", noise_level=0.3, clip_range=2e-6, kl_beta=0.0,
                             std_scope="group", learning_rate=2e-4, ratio_norm=True, grad_reweight=True,
                             delta="beta_over_dt", train_timesteps="random", init_same_noise=True),
}

# The toy world's latents have D = 4·16·16 = 1024 elements against 65,536 for SD3.5-M at 512 px;
# per-dim-mean log-ratios scale by √(65536/1024) = 8 (TOYWORLD.md), so the clip ranges do too.
TOY_CLIP_RANGE = {"flow_grpo": 8e-4, "grpo_guard": 1.5e-4, "dance_grpo": 8e-4, "dance_grpo_guard": 1.5e-4}

BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(resolution=32, cfg_scale=4.0, shift=3.0, num_steps=10, eval_num_steps=20),
    "sd3": dict(resolution=512, cfg_scale=4.5, shift=3.0, num_steps=10, eval_num_steps=40),
    "flux": dict(resolution=512, cfg_scale=3.5, shift=3.0, num_steps=16, eval_num_steps=28),
}
# Pixel resolution must be divisible by VAE factor × patch size (FLUX: × 2 for 2×2 packing).
RESOLUTION_MULTIPLE = {"toy": 4, "sd3": 16, "flux": 16}

# Reward and gold names are registry keys (grpo_guard.rewards.REGISTRY), never import paths: a
# name like "os:system" or "pkg.mod:fn" is refused here, whatever the registry holds.
_REWARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")

_DERIVED = ("dynamics", "noise_level", "clip_range", "kl_beta", "std_scope", "learning_rate",
            "ratio_norm", "grad_reweight", "delta", "train_timesteps", "init_same_noise",
            "resolution", "cfg_scale", "shift", "num_steps", "eval_num_steps")


def _f(default: Any, help: str, group: str, **kw: Any) -> Any:
    return Field(default, description=help, json_schema_extra={"group": group}, **kw)


class RunConfig(BaseModel):
    """Every knob of a GRPO / GRPO-Guard run. See ``grpo-guard config --help`` or the New-run form."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)

    # ---- model -------------------------------------------------------------------------
    backbone: Backbone = _f("toy", "Backbone adapter: 'toy' (the shipped CPU shapes model), 'sd3' (SD3.5-Medium) or 'flux' (FLUX.1-dev).", "model")
    model: str | None = _f(None, "Local directory or hub id of the base pipeline. Empty: the shipped toy base model (toy backbone only).", "model")
    resolution: int | None = _f(None, "Image side in pixels (toy 32, SD3/FLUX 512). Must be divisible by the backbone's VAE factor × patch size.", "model", ge=8, le=4096)
    lora_rank: int = _f(32, "LoRA rank (paper: 32). 0 means full fine-tuning.", "model", ge=0, le=1024)
    lora_alpha: float = _f(64.0, "LoRA alpha (paper: 64).", "model", gt=0, le=1e6)
    lora_targets: list[str] = _f(
        ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
        "Module names that receive LoRA adapters.", "model", min_length=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = _f("no", "Autocast dtype for the transformer (log-probs are always float32).", "model")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.", "model")
    num_gpus: int = _f(1, "GPUs for this run on each node; >1 launches data parallel over prompt groups with accelerate.", "model", ge=1, le=64)
    num_nodes: int = _f(1, "Machines this run spans, each with num_gpus GPUs (num_nodes × num_gpus ranks).", "model", ge=1, le=64)
    parallelism: Literal["ddp", "fsdp"] = _f("ddp", "How ranks hold the trained weights: ddp replicates them; fsdp shards weights, gradients and optimizer state (FSDP2, per transformer block).", "model")
    fsdp_cpu_offload: bool = _f(False, "With parallelism fsdp: keep the sharded parameters and optimizer state in CPU memory between uses.", "model")

    # ---- algorithm & sampler -----------------------------------------------------------
    algorithm: Algorithm = _f("grpo_guard", "flow_grpo | grpo_guard (RatioNorm + 1/|dt| reweighting) | dance_grpo | dance_grpo_guard. Sets the defaults below.", "algorithm")
    dynamics: Dynamics | None = _f(None, "SDE used for rollouts: flow_grpo (σ_t = η√(t/(1−t))), dance_grpo (σ_t = η), cps (coefficient-preserving) or ode. Default: by algorithm.", "algorithm")
    noise_level: float | None = _f(None, "η, the SDE noise level (Flow-GRPO 0.7, DanceGRPO 0.3).", "algorithm", ge=0.0, le=10.0)
    cps_logprob: Literal["flow_grpo", "gaussian"] = _f("flow_grpo", "CPS log-prob form: flow_grpo's unscaled −mean (x'−μ)², or the Gaussian density.", "algorithm")
    num_steps: int | None = _f(None, "Denoising steps T for rollouts (SD3.5-M 10, FLUX 16).", "algorithm", ge=2, le=1000)
    shift: float | None = _f(None, "Sigma schedule shift (SD3.5-M 3). With shift 1 every step has the same |dt| and reweighting is a constant.", "algorithm", gt=0, le=100)
    cfg_scale: float | None = _f(None, "Classifier-free guidance scale for rollouts and the training forward (SD3.5-M 4.5; FLUX: the guidance embedding).", "algorithm", ge=0, le=100)
    detach_uncond: bool = _f(False, "Detach the unconditional CFG branch in the training forward (older train_sd3.py); Guard does not.", "algorithm")
    timestep_fraction: float = _f(0.99, "Share of the T steps that are trained: the first int(T·f) (Flow-GRPO) or a random subset per sample (DanceGRPO: 0.6).", "algorithm", gt=0, le=1)
    train_timesteps: Literal["first", "random", "window"] | None = _f(None, "Which denoising steps are trained: 'first' int(T·fraction), 'random' per sample, or an SDE 'window'.", "algorithm")
    sde_window_size: int = _f(0, "With train_timesteps='window': the number of consecutive SDE steps (others are ODE).", "algorithm", ge=0, le=1000)
    sde_window_range: tuple[int, int] = _f((0, 10), "Range [lo, hi) from which the window start is drawn.", "algorithm")
    init_same_noise: bool | None = _f(None, "Share the initial noise within a group (DanceGRPO).", "algorithm")
    sample_batch_size: int = _f(64, "Trajectories per forward pass when sampling rollouts and eval images (a memory knob; each sample's noise depends only on its seed, not on this).", "algorithm", ge=1, le=100000)

    # ---- policy update -----------------------------------------------------------------
    group_size: int = _f(8, "G: images sampled per prompt (paper: 24).", "policy", ge=2, le=4096)
    prompts_per_epoch: int = _f(8, "Prompt groups sampled per epoch (paper: 48).", "policy", ge=1, le=100000)
    epochs: int = _f(40, "Training epochs (one epoch = sample, score, update).", "policy", ge=1, le=10_000_000)
    inner_epochs: int = _f(1, "Passes over each epoch's samples.", "policy", ge=1, le=100)
    train_batch_size: int = _f(16, "Samples per micro-batch in the policy update.", "policy", ge=1, le=100000)
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step (each covers all trained denoising steps).", "policy", ge=1, le=100000)
    update_rows_per_forward: int | Literal["auto"] = _f(
        "auto", "Rows — (trajectory, trained step, CFG branch) — per forward and backward of the policy update; "
                "gradients accumulate over the chunks, so the update is the same (a memory knob). 'auto': the largest "
                "number whose planned peak fits the worker's GPU (`grpo-guard plan`); all rows on a CPU.", "policy")
    learning_rate: float | None = _f(None, "AdamW learning rate (Flow-GRPO 3e-4, Guard 1e-4, FLUX Guard 2e-4).", "policy", gt=0, le=1.0)
    adam_beta1: float = _f(0.9, "AdamW β1.", "policy", ge=0, lt=1)
    adam_beta2: float = _f(0.999, "AdamW β2.", "policy", ge=0, lt=1)
    weight_decay: float = _f(1e-4, "AdamW weight decay.", "policy", ge=0, le=10)
    adam_eps: float = _f(1e-8, "AdamW epsilon.", "policy", gt=0, le=1)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).", "policy", ge=0, le=1e6)
    clip_range: float | None = _f(None, "PPO clip ε_c on the (per-dim-mean) ratio. Flow-GRPO 1e-4, Guard 2e-6 (toy: 8e-4 / 1.5e-4).", "policy", gt=0, le=10)
    adv_clip: float = _f(5.0, "Advantages are clamped to ±adv_clip.", "policy", gt=0, le=1e6)
    std_scope: Literal["global", "group"] | None = _f(None, "Advantage std over the whole batch (Flow-GRPO) or within each group (Guard).", "policy")
    kl_beta: float | None = _f(None, "Weight of the KL to the reference (base) model (Flow-GRPO 0.04; Guard 0).", "policy", ge=0, le=1e6)
    ratio_norm: bool | None = _f(None, "GRPO-Guard RatioNorm (per-sample bias, ALGORITHM.md §4.2). Default: by algorithm.", "policy")
    grad_reweight: bool | None = _f(None, "GRPO-Guard per-step gradient reweighting by δ (§4.3). Default: by algorithm.", "policy")
    delta: Literal["inv_dt", "beta_over_dt", "inv_beta_dt", "none"] | None = _f(None, "Reweighting form δ: 1/|dt| (Flow-SDE), β/|dt| (Dance, paper), 1/(β|dt|) (exact).", "policy")
    ema: bool = _f(True, "Keep an EMA of the trained weights for eval and checkpoints.", "policy")
    ema_decay: float = _f(0.9, "EMA decay.", "policy", ge=0, lt=1)
    ema_every: int = _f(8, "Update the EMA every N optimizer steps.", "policy", ge=1, le=100000)
    seed: int = _f(0, "Seed for every RNG stream of the run (sampling, shuffling, init).", "policy", ge=0, le=2**31 - 1)

    # ---- rewards -----------------------------------------------------------------------
    prompts: list[str | dict[str, Any]] | str = _f(
        "toy:train", "Training prompts: a named set (toy:train, ocr:train, geneval:train, ... — `grpo-guard prompts "
                     "list`), file:PATH (one prompt a line), geneval:file:PATH (GenEval's evaluation_metadata.jsonl), "
                     "hf:DATASET[:SPLIT][#COLUMN] (a locally cached Hugging Face dataset), or a list whose items are "
                     "prompts or mappings {prompt, tag, include, exclude} (GenEval metadata).", "rewards")
    rewards: dict[str, float] = _f({"toy_fg_share": 1.0}, "Proxy rewards and their weights, R = Σ w_k R_k (a weight of 0 logs without optimising).", "rewards", min_length=1)
    gold: list[str] = _f(["toy_alignment", "toy_fidelity"], "Gold evaluators scored on the eval set (never optimised).", "rewards")
    reward_options: dict[str, dict[str, Any]] = _f(
        {}, "Options passed to a reward's or gold evaluator's factory, by name, e.g. {pickscore: {path: "
            "/models/PickScore_v1, device: cuda, batch_size: 16}}: local weights (path, processor_path, head_path), "
            "device ('cuda' is each data-parallel rank's own GPU), dtype (fp32|fp16), batch_size, scale. Unset ones "
            "fall back to GG_REWARD_<NAME>_PATH and the like. An unknown option's error lists those the reward takes.",
        "rewards")

    # ---- eval & checkpoints ------------------------------------------------------------
    eval_prompts: list[str | dict[str, Any]] | str = _f("toy:heldout", "Fixed eval prompts (a list or a set, as for `prompts`; e.g. ocr:test, geneval:test).", "eval")
    eval_seeds: list[int] = _f([0, 1], "Fixed eval seeds; each prompt is sampled once per seed.", "eval", min_length=1)
    eval_num_steps: int | None = _f(None, "ODE steps for evaluation sampling (SD3.5-M 40).", "eval", ge=1, le=1000)
    eval_every: int = _f(5, "Evaluate every N epochs (and at epoch 0 and the end).", "eval", ge=1, le=10_000_000)
    checkpoint_every: int = _f(10, "Save a checkpoint every N epochs (and at the end and on stop).", "eval", ge=1, le=10_000_000)
    keep_checkpoints: int = _f(3, "Latest checkpoints kept on disk (the best-gold one is kept too).", "eval", ge=1, le=100000)
    on_overoptimization: Literal["continue", "stop", "stop_keep_best"] = _f(
        "continue", "When the run's over-optimisation alarm fires: continue, stop (with a checkpoint), or "
                    "stop_keep_best (stop, and mark the best-gold checkpoint: `grpo-guard runs best ID`).", "eval")

    # ------------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _reject_non_mapping(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError(f"a run config must be a mapping of field: value, got {type(data).__name__}")
        errors = [e for name, value in data.items() if name in cls.model_fields
                  for e in safe_yaml.strict_kind_errors(str(name), cls.model_fields[name].annotation, value)]
        if errors:
            raise ValueError(ErrorBundle(errors))
        return data

    @field_validator("update_rows_per_forward", mode="before")
    @classmethod
    def _rows_per_forward(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000):
            return v
        raise ValueError(f"must be 'auto' or a whole number from 1 to 1000000, got {safe_yaml.preview(v)}")

    @model_validator(mode="after")
    def _fill_and_check(self) -> RunConfig:
        algo = ALGORITHM_DEFAULTS[self.algorithm]
        back = BACKBONE_DEFAULTS[self.backbone]
        for name in _DERIVED:
            if getattr(self, name) is None:
                value = back[name] if name in back else algo[name]
                if name == "clip_range" and self.backbone == "toy":
                    value = TOY_CLIP_RANGE[self.algorithm]
                object.__setattr__(self, name, value)
        errors: list[tuple[str, str]] = []
        mult = RESOLUTION_MULTIPLE[self.backbone]
        if self.resolution % mult:
            lo = max(mult, self.resolution // mult * mult)
            errors.append(("resolution", f"{self.resolution} is not divisible by {mult} for the {self.backbone} backbone; use {lo} or {lo + mult}"))
        if self.backbone != "toy" and not self.model:
            errors.append(("model", f"the {self.backbone} backbone needs `model`: a local directory or a hub id"))
        if self.ratio_norm and self.dynamics == "ode":
            errors.append(("ratio_norm", "RatioNorm needs a stochastic step; dynamics 'ode' has std 0"))
        if self.dynamics == "ode":
            errors.append(("dynamics", "'ode' rollouts have no log-probabilities to train on; use flow_grpo, dance_grpo or cps"))
        if self.train_timesteps == "window":
            lo, hi = self.sde_window_range
            if self.sde_window_size < 1:
                errors.append(("sde_window_size", "must be >= 1 when train_timesteps is 'window'"))
            if not (0 <= lo < hi <= self.num_steps):
                errors.append(("sde_window_range", f"must satisfy 0 <= lo < hi <= num_steps ({self.num_steps}), got {list(self.sde_window_range)}"))
            elif hi - 1 + self.sde_window_size > self.num_steps:
                errors.append(("sde_window_size", f"a window of {self.sde_window_size} starting at {hi - 1} passes num_steps ({self.num_steps})"))
        if self.num_trained_steps() < 1:
            errors.append(("timestep_fraction", f"trains no step: int({self.num_steps} × {self.timestep_fraction}) = 0"))
        for k in self.rewards:
            if not _REWARD_NAME.match(k):
                errors.append((f"rewards.{k[:100]}", "is not a reward name (letters, digits, '_' and '-'; "
                                               "rewards are chosen from the registry by name, never by import path)"))
        for g in self.gold:
            if not _REWARD_NAME.match(g):
                errors.append(("gold", f"{safe_yaml.preview(g)} is not an evaluator name (letters, digits, '_' and '-'; "
                                       "evaluators are chosen from the registry by name, never by import path)"))
        errors.extend(self._reward_option_errors())
        errors.extend(self._prompt_spec_errors())
        for k, w in self.rewards.items():
            if not math.isfinite(w) or w < 0:
                errors.append((f"rewards.{k}", f"weight must be a finite number >= 0, got {w}"))
        for g in self.gold:  # a gold evaluator is never optimised; a weight-0 proxy copy only logs it online
            if self.rewards.get(g, 0) > 0:
                errors.append(("gold", f"{g!r} is also a proxy reward with weight {self.rewards[g]}; a gold evaluator "
                                       "must not be optimised (give it weight 0 in rewards, or drop it from gold)"))
        if all(w == 0 for w in self.rewards.values()):
            errors.append(("rewards", "at least one proxy reward needs a weight > 0"))
        if self.prompts_per_epoch < self.world_size():  # each GPU samples whole prompt groups
            errors.append(("prompts_per_epoch", f"must be at least num_nodes × num_gpus ({self.world_size()}): each "
                                                "GPU samples whole prompt groups"))
        if self.parallelism == "fsdp" and self.prompts_per_epoch % self.world_size():  # ranks sample in lockstep
            errors.append(("prompts_per_epoch", f"must be a multiple of num_nodes × num_gpus ({self.world_size()}) with "
                                                "parallelism fsdp: every rank samples the same number of groups"))
        if self.fsdp_cpu_offload and self.parallelism != "fsdp":
            errors.append(("fsdp_cpu_offload", "offloads FSDP shards; set parallelism: fsdp, or drop it"))
        if self.gradient_accumulation_steps * self.train_batch_size > self.group_size * self.prompts_per_epoch * 64:
            errors.append(("gradient_accumulation_steps", "one optimizer step would need more samples than 64 epochs provide"))
        if errors:
            raise ValueError(ErrorBundle(errors))
        return self

    def _reward_option_errors(self) -> list[tuple[str, str]]:
        """Each ``reward_options`` entry names a reward or gold evaluator of this run and only
        options its registry entry declares, with values of the declared type."""
        from grpo_guard.rewards import check_option  # numpy only: safe for the app

        errors: list[tuple[str, str]] = []
        used = list(dict.fromkeys([*self.rewards, *self.gold]))
        for name, opts in self.reward_options.items():
            where = f"reward_options.{name}"
            if name not in used:
                errors.append((where, f"is not a reward or gold evaluator of this run ({', '.join(used)})"))
                continue
            for key, value in opts.items():
                why = check_option(name, str(key), value)
                if why and why.startswith("unknown reward"):
                    errors.append((where, why))
                    break
                if why:
                    errors.append((f"{where}.{key}", why))
                elif key == "device" and self.world_size() > 1 and str(value).startswith("cuda:"):
                    # every rank would load the scorer on that one GPU (the ranks see the same list)
                    errors.append((f"{where}.{key}", f"{value!r} puts every rank's scorer on one GPU; with "
                                   "num_gpus > 1 use 'cuda' (each rank's own GPU) or 'cpu'"))
        return errors

    def _prompt_spec_errors(self) -> list[tuple[str, str]]:
        """Prompt specs are well-formed, name known sets, and carry GenEval metadata where a
        GenEval reward or evaluator scores them (:func:`grpo_guard.prompts.run_prompt_errors`)."""
        from grpo_guard.prompts import run_prompt_errors

        # a GenEval scorer given its own metadata file (reward option `metadata`) looks prompts up there
        with_file = [k for k in [*self.rewards, *self.gold] if self.reward_options.get(k, {}).get("metadata")]
        return run_prompt_errors(self.prompts, self.eval_prompts, rewards=[k for k in self.rewards if k not in with_file],
                                 gold=[g for g in self.gold if g not in with_file])

    def resolved_prompts(self) -> tuple[list[Any], list[Any]]:
        """(training prompts, eval prompts) as :class:`grpo_guard.prompts.Prompt` lists, read
        now (files, datasets); ConfigError names the field when one cannot be read. The trainer
        calls this before any model loads."""
        from grpo_guard.prompts import resolve_prompts

        out: dict[str, list[Any]] = {}
        errors: list[tuple[str, str]] = []
        for name in ("prompts", "eval_prompts"):
            try:
                out[name] = resolve_prompts(getattr(self, name))
            except ValueError as e:
                errors.append((name, str(e)))
        if errors:
            raise ConfigError(errors)
        return out["prompts"], out["eval_prompts"]

    def reward_factory_options(self, name: str) -> dict[str, Any]:
        """The options given for reward ``name`` (unset ones dropped): keyword arguments of its
        factory (``grpo_guard.rewards.build_reward(name, **options)``)."""
        return {k: v for k, v in self.reward_options.get(name, {}).items() if v is not None}

    # ---- helpers -----------------------------------------------------------------------
    def submit_errors(self, *, check_paths: bool = False, config_dir: str | None = None) -> list[tuple[str, str]]:
        """What stops this config from being queued beyond its own validity
        (:func:`grpo_guard.config.submission.submit_errors`)."""
        return submission.submit_errors(self, check_paths=check_paths, config_dir=config_dir)

    def with_prompt_files_inlined(self, *, config_dir: str | None = None, missing_ok: bool = False) -> RunConfig:
        """This config with its prompt files read in (:func:`grpo_guard.config.submission.with_prompt_files_inlined`)."""
        return submission.with_prompt_files_inlined(self, config_dir=config_dir, missing_ok=missing_ok)

    def check_submittable(self, *, check_paths: bool = False, config_dir: str | None = None) -> None:
        """Raise ConfigError with :meth:`submit_errors`, if any."""
        errors = self.submit_errors(check_paths=check_paths, config_dir=config_dir)
        if errors:
            raise ConfigError(errors)

    def prompt_overlap_warning(self) -> str | None:
        """One sentence when training and eval prompts share texts (:func:`grpo_guard.config.submission.prompt_overlap_warning`)."""
        return submission.prompt_overlap_warning(self)

    def num_trained_steps(self) -> int:
        """|S|, the number of denoising steps trained per sample."""
        if self.train_timesteps == "window":
            return self.sde_window_size
        return int(self.num_steps * self.timestep_fraction)

    def world_size(self) -> int:
        """Ranks of this run: ``num_nodes × num_gpus``."""
        return self.num_nodes * self.num_gpus

    def samples_per_epoch(self) -> int:
        return self.group_size * self.prompts_per_epoch

    def optimizer_steps_per_epoch(self) -> int:
        """AdamW steps per epoch: the micro-batches of the largest rank's prompt groups, times
        ``inner_epochs``, one step per ``gradient_accumulation_steps`` (and one at the epoch's end)."""
        groups = math.ceil(self.prompts_per_epoch / self.world_size())
        batches = self.inner_epochs * math.ceil(self.group_size * groups / self.train_batch_size)
        return math.ceil(batches / self.gradient_accumulation_steps)

    def first_ema_epoch(self) -> int | None:
        """The first epoch after which the EMA weights, which every eval samples, differ from the
        base model's (the EMA updates every ``ema_every`` optimizer steps); None without an EMA
        (eval then samples the trained weights, which move from epoch 1)."""
        return math.ceil(self.ema_every / self.optimizer_steps_per_epoch()) if self.ema else None

    def ema_notice(self, evaluated_step: int | None = None) -> str | None:
        """One sentence when eval still samples the base model's weights at ``evaluated_step``
        (None: at any step of the run), else None."""
        first = self.first_ema_epoch()
        if first is None or first <= 1:
            return None
        why = (f"the EMA updates every ema_every={self.ema_every} optimizer steps and an epoch takes "
               f"{self.optimizer_steps_per_epoch()}")
        if first > self.epochs:
            return (f"The eval weights never leave the base model's: {why}, so the EMA first moves after epoch "
                    f"{first}, beyond epochs={self.epochs}; every eval samples the base model. Lower ema_every "
                    "(e.g. 1) or turn ema off.")
        if evaluated_step is None or evaluated_step < first:
            return (f"The eval weights are still the base model's: {why}, so the EMA first moves after epoch "
                    f"{first}; evals before then sample the base model.")
        return None

    def fields_set(self) -> set[str]:
        """Fields the user gave explicitly (the rest are defaults or algorithm-derived)."""
        return set(self.model_fields_set)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        data = self.to_dict()
        text = safe_yaml.dump(data, sort_keys=False, allow_unicode=True)
        # PyYAML writes some characters raw (e.g. U+0085, a line break to its reader) that do not
        # read back; escape everything non-ASCII then, so the round trip is exact.
        if safe_yaml.read_back(text) != data:
            text = safe_yaml.dump(data, sort_keys=False, allow_unicode=False)
        return text

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A new validated config with `overrides` applied on top of the user-set fields (so
        changing `algorithm` re-derives its defaults unless they were set explicitly)."""
        base = {k: v for k, v in self.to_dict().items() if k in self.fields_set()}
        base.update(overrides)
        return RunConfig.from_dict(base)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_format_errors(e)) from None

    @classmethod
    def from_yaml(cls, text: str, overrides: Iterable[str] = ()) -> RunConfig:
        """Parse YAML text with the limits of :mod:`grpo_guard.config.safe_yaml`, apply ``key=value``
        overrides (values parsed the same way), validate."""
        data = safe_yaml.load_mapping(text)
        return cls.from_dict(apply_overrides(data, parse_overrides(overrides)))

    @classmethod
    def from_file(cls, path: str, overrides: Iterable[str] = ()) -> RunConfig:
        """:meth:`from_yaml` of a regular UTF-8 file of at most ``safe_yaml.LIMITS.max_bytes``."""
        return cls.from_yaml(safe_yaml.read_config_file(path), overrides)

    @classmethod
    def field_groups(cls) -> dict[str, list[str]]:
        """Field names by form section, in declaration order."""
        groups: dict[str, list[str]] = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra or {}
            groups.setdefault(extra.get("group", "other"), []).append(name)  # type: ignore[union-attr]
        return groups


def _format_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) pairs of a RunConfig validation error (:func:`format_errors`)."""
    return format_errors(exc, RunConfig.model_fields)

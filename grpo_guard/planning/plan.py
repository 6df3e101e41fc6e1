"""``grpo-guard plan``: the GPU memory and time a run needs, per rank, before it is launched.

Phases (each a peak, in bytes, on one rank's GPU):

- **sampling**: resident weights (transformer, text encoders, VAE, reward models, optimizer state and
  EMA) + the epoch's rollout buffers + the larger of one no-grad transformer pass over
  ``sample_batch_size`` trajectories (CFG batched) and one VAE decode of 32 latents;
- **rewards**: resident weights + rollout buffers (the reward models' own activations are not
  measured: a batch of images through a CLIP is small next to the rest);
- **update**: resident weights + rollout buffers + the kept per-row statistics + gradients + one
  chunk's forward and backward of ``update_rows_per_forward`` rows (measured, see
  :mod:`grpo_guard.planning.measure`).

The run fits when the largest phase plus a margin (5 % for the caching allocator, 1 GiB for the
CUDA context) is within the GPU's memory. Measurements are cached on disk by what they depend on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from grpo_guard.planning.gpus import GPUS, GpuSpec, gpu_from_memory
from grpo_guard.planning.spec import PipelineSpec, reward_parameters, spec_for

GIB = 1 << 30
MARGIN_FRACTION = 0.05
MARGIN_BYTES = 1 * GIB
DEFAULT_MFU = 0.30
DECODE_BATCH = 32  # SD3Backbone.decode's batch
CACHE_VERSION = 4


def gib(n: float) -> float:
    return n / GIB


@dataclass
class Plan:
    architecture: str                # the shipped architecture's name, or the local directory's
    backbone: str
    gpu: str
    gpu_memory_gib: float
    rows_per_forward: int            # transformer rows per update forward (CFG branches counted)
    rows_per_micro_batch: int        # all rows of one micro-batch (train_batch_size × steps × branches)
    rows_requested: int | str        # the config's update_rows_per_forward
    phases: dict[str, dict[str, float]]   # phase -> part -> GiB
    peak_gib: float
    peak_phase: str
    dominant: str
    fits: bool
    needed_gib: float                # peak + margin
    flops_per_epoch: float
    mfu: float
    peak_tflops: float
    epoch_seconds: float
    gpu_hours: float
    epochs: int
    num_gpus: int
    notes: list[str] = field(default_factory=list)
    phase_bytes: dict[str, dict[str, int]] = field(default_factory=dict)
    parallelism: str = "ddp"         # ddp: every rank holds every weight; fsdp: the transformer is sharded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One sentence: the verdict with the figures."""
        verdict = "fits" if self.fits else "does not fit"
        return (f"planned peak {self.peak_gib:.1f} GiB per GPU ({self.peak_phase}, mostly {self.dominant}) "
                f"{verdict} the {self.gpu} ({self.gpu_memory_gib:.1f} GiB, {self.needed_gib:.1f} GiB needed with "
                f"the margin) at update_rows_per_forward={self.rows_per_forward}")

    def text(self) -> str:
        split = (f", {self.parallelism}: transformer weights, gradients and optimizer state sharded"
                 if self.parallelism == "fsdp" else "")
        lines = [f"plan: {self.architecture} ({self.backbone}), per GPU of {self.num_gpus}{split}, on {self.gpu} "
                 f"({self.gpu_memory_gib:.1f} GiB)",
                 f"update rows per forward: {self.rows_per_forward} of {self.rows_per_micro_batch} per micro-batch "
                 f"(update_rows_per_forward: {self.rows_requested})", ""]
        for phase, parts in self.phases.items():
            total = parts["total"]
            detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if k != "total" and v >= 0.05)
            lines.append(f"  {phase:<9} {total:7.1f} GiB   ({detail})")
        lines += ["", f"peak {self.peak_gib:.1f} GiB in {self.peak_phase}, dominated by {self.dominant}; "
                      f"needs {self.needed_gib:.1f} GiB with the margin (5 % + 1 GiB): "
                      + ("FITS" if self.fits else "DOES NOT FIT"),
                  f"FLOPs per epoch {self.flops_per_epoch:.3g} -> "
                  + (f"{self.epoch_seconds:.2g} s" if self.epoch_seconds < 60 else f"{self.epoch_seconds / 60:.1f} min")
                  + f" per epoch at MFU {self.mfu:.0%} of {self.peak_tflops:g} TFLOP/s; {self.epochs} epochs = "
                  f"{self.gpu_hours:.3g} GPU-hours ({self.num_gpus} GPU{'s' if self.num_gpus > 1 else ''})"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- cached measurements -------------------------------------------------------------------------

def _cache_dir() -> str:
    root = os.environ.get("GG_PLAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "grpo-guard", "plans")
    return root


def _cached(kind: str, key: dict[str, Any], compute) -> dict[str, Any]:
    text = json.dumps({"v": CACHE_VERSION, "kind": kind, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = os.path.join(_cache_dir(), f"{kind}-{digest}.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict) and data.get("key") == text:
            return data["value"]
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"key": text, "value": value}, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: plans are only slower
    return value


def _model_key(spec: PipelineSpec, config: Any, device: str) -> dict[str, Any]:
    return {"spec": spec.components["transformer"], "pipeline": spec.pipeline, "text": spec.tokenizer_max_length,
            "vae": spec.components.get("vae"), "device": device,
            **{k: getattr(config, k) for k in ("mixed_precision", "lora_rank", "lora_alpha", "lora_targets",
                                               "gradient_checkpointing", "resolution", "cfg_scale", "detach_uncond",
                                               "kl_beta", "dynamics", "ratio_norm", "grad_reweight", "delta")}}


def update_pass(spec: PipelineSpec, config: Any, latent_rows: int, device: str) -> dict[str, Any]:
    from grpo_guard.planning.measure import measure_update_chunk

    def compute() -> dict[str, Any]:
        m, resident = measure_update_chunk(spec, config, latent_rows, device=device)
        return {"transient": m.transient, "flops": m.flops, **resident}

    return _cached("update", {**_model_key(spec, config, device), "rows": latent_rows}, compute)


def sampling_pass(spec: PipelineSpec, config: Any, latent_rows: int, device: str) -> dict[str, Any]:
    from grpo_guard.planning.measure import measure_sampling_forward, measure_vae_decode

    def compute() -> dict[str, Any]:
        m = measure_sampling_forward(spec, config, latent_rows, device=device)
        return {"transient": m.transient, "flops": m.flops,
                "decode": measure_vae_decode(spec, config, min(DECODE_BATCH, latent_rows), device=device)}

    key = {k: v for k, v in _model_key(spec, config, device).items()  # what a no-grad pass depends on
           if k not in ("gradient_checkpointing", "kl_beta", "dynamics", "ratio_norm", "grad_reweight", "delta")}
    return _cached("sampling", {**key, "rows": latent_rows}, compute)


def frozen_parameters(spec: PipelineSpec) -> dict[str, int]:
    from grpo_guard.planning.measure import component_parameters

    return _cached("frozen", {"components": {k: v for k, v in spec.components.items() if k != "transformer"}},
                   lambda: component_parameters(spec))


# ---- the plan ------------------------------------------------------------------------------------

def _branches(spec: PipelineSpec, config: Any) -> int:
    if spec.pipeline == "FluxPipeline":
        return 1
    return 2 if config.cfg_scale != 1.0 and not config.detach_uncond else 1


def resolve_gpu(gpu: str | None = None, gpu_memory_gib: float | None = None) -> GpuSpec:
    """A named preset, or a memory size (``--gpu-memory``); default the H100."""
    if gpu_memory_gib is not None:
        return gpu_from_memory(gpu_memory_gib, gpu)
    return GPUS[gpu or "h100"]


def make_plan(config: Any, gpu: GpuSpec, *, device: str = "cuda", mfu: float | None = None,
              rows: int | None = None) -> Plan:
    """The plan of ``config`` on ``gpu``. ``rows`` overrides ``update_rows_per_forward`` (transformer
    rows); ``auto`` picks the largest that fits (:func:`auto_rows`). ``device="cpu"`` plans the CPU
    run (float32 weights), for validation against measured CPU peaks."""
    spec = spec_for(config)
    branches = _branches(spec, config)
    steps = config.num_trained_steps()
    per_mb = config.train_batch_size * steps
    requested = config.update_rows_per_forward
    if rows is None:
        rows = auto_rows(config, gpu, device=device, spec=spec) if requested == "auto" else int(requested)
    latent_rows = max(1, min(per_mb, rows // branches))
    return _plan_at(config, spec, gpu, device, latent_rows, branches, requested, mfu)


def _plan_at(config: Any, spec: PipelineSpec, gpu: GpuSpec, device: str, latent_rows: int, branches: int,
             requested: int | str, mfu: float | None) -> Plan:
    from grpo_guard.planning.measure import latent_shape, weight_dtype

    wbytes = weight_dtype(config.mixed_precision, device).itemsize
    steps = config.num_trained_steps()
    per_mb = config.train_batch_size * steps
    upd = update_pass(spec, config, latent_rows, device)
    n_local = config.group_size * math.ceil(config.prompts_per_epoch / config.world_size())
    samp = sampling_pass(spec, config, min(config.sample_batch_size, n_local), device)
    frozen = frozen_parameters(spec)
    rewards = reward_parameters()
    reward_names = list(dict.fromkeys([*config.rewards, *config.gold]))
    reward_bytes = 0
    for name in reward_names:
        opts = config.reward_options.get(name, {})
        if str(opts.get("device", "cuda")).startswith("cpu"):
            continue
        per = 2 if opts.get("dtype") == "fp16" else 4
        reward_bytes += rewards.get(name, 0) * per
    numel = math.prod(latent_shape(spec, config.resolution))
    rollout = (3 * n_local * steps * numel + n_local * numel) * 4 + n_local * steps * 4 * 6
    stats_rows = n_local * steps * numel * 4     # the update keeps each row's detached mean for §8 stats
    trainable = int(upd["trainable_numel"])
    optimizer = 2 * trainable * 4 + (trainable * 4 if config.ema else 0)
    transformer_w = int(upd["weights"])
    others_w = sum(frozen.values()) * wbytes
    weights = transformer_w + others_w
    grads = int(upd["gradients"])
    sharding = fsdp_shares(config, spec, transformer_w)
    if sharding is not None:  # the transformer's own bytes: 1/world each, plus the gathered blocks
        share, gathered, note = sharding
        transformer_w, grads, optimizer = int(transformer_w * share) + gathered, int(grads * share), int(optimizer * share)
        weights = transformer_w + others_w
    resident = weights + reward_bytes + optimizer

    phases_b = {
        "sampling": {"weights": weights, "reward models": reward_bytes, "optimizer state": optimizer,
                     "rollout buffers": rollout, "activations": max(int(samp["transient"]), int(samp["decode"]))},
        "rewards": {"weights": weights, "reward models": reward_bytes, "optimizer state": optimizer,
                    "rollout buffers": rollout},
        "update": {"weights": weights, "reward models": reward_bytes, "optimizer state": optimizer,
                   "rollout buffers": rollout + stats_rows, "gradients": grads,
                   "activations": int(upd["transient"])},
    }
    phases: dict[str, dict[str, float]] = {}
    for name, parts in phases_b.items():
        phases[name] = {k: round(gib(v), 3) for k, v in parts.items()}
        phases[name]["total"] = round(gib(sum(parts.values())), 3)
    peak_phase = max(phases, key=lambda k: phases[k]["total"])
    peak = sum(phases_b[peak_phase].values())
    dominant = max(phases_b[peak_phase], key=lambda k: phases_b[peak_phase][k])
    needed = peak * (1 + MARGIN_FRACTION) + MARGIN_BYTES
    fits = needed <= gpu.memory_gib * GIB

    # FLOPs of one epoch on this rank: T sampling passes per trajectory, the update's rows.
    samp_rows = min(config.sample_batch_size, n_local)
    flops = (samp["flops"] / samp_rows) * n_local * config.num_steps \
        + (upd["flops"] / latent_rows) * n_local * steps * config.inner_epochs
    mfu = mfu or measured_mfu(config.backbone) or DEFAULT_MFU
    epoch_s = flops / (gpu.bf16_tflops * 1e12 * mfu)
    notes = [f"time counts the sampler's {config.num_steps} steps and the update (gradient checkpointing's "
             "recompute included); evaluation, reward scoring and data loading are not counted",
             "reward models' activations are not measured (their weights are)"]
    if sharding is not None:
        notes.append(sharding[2])
    if resident > gpu.memory_gib * GIB:
        notes.append("the resident weights alone exceed this GPU; put reward models on the CPU "
                     "(reward_options NAME.device: cpu), use fp16 rewards, or use a larger GPU")
    return Plan(architecture=_arch_label(spec.name),
                backbone=config.backbone, gpu=gpu.label, gpu_memory_gib=gpu.memory_gib,
                rows_per_forward=latent_rows * branches, rows_per_micro_batch=per_mb * branches,
                rows_requested=requested, phases=phases, peak_gib=round(gib(peak), 2), peak_phase=peak_phase,
                dominant=dominant, fits=fits, needed_gib=round(gib(needed), 2), flops_per_epoch=float(flops),
                mfu=mfu, peak_tflops=gpu.bf16_tflops, epoch_seconds=epoch_s,
                gpu_hours=epoch_s * config.epochs * config.world_size() / 3600, epochs=config.epochs,
                num_gpus=config.world_size(), notes=notes, phase_bytes=phases_b,
                parallelism=config.parallelism)


def transformer_blocks(spec: PipelineSpec) -> int:
    """The FSDP units of the transformer: its blocks (FLUX: double and single)."""
    t = spec.transformer
    return max(1, int(t.get("num_layers", 1) or 1) + int(t.get("num_single_layers", 0) or 0))


def fsdp_shares(config: Any, spec: PipelineSpec, transformer_bytes: int) -> tuple[float, int, str] | None:
    """With ``parallelism: fsdp`` over several ranks: (the share of the transformer's weights,
    gradients, optimizer state and EMA a rank keeps on its GPU — 1/world, 0 with CPU offload — the
    bytes of the blocks gathered whole at a time — two blocks of the average size: the one that runs
    and the next, prefetched — and a note saying so). None for data parallel or a single rank."""
    world = config.world_size()
    if config.parallelism != "fsdp" or world < 2:
        return None
    share = 0.0 if config.fsdp_cpu_offload else 1.0 / world
    gathered = min(transformer_bytes, 2 * transformer_bytes // transformer_blocks(spec))
    where = ("kept in host memory (fsdp_cpu_offload)" if config.fsdp_cpu_offload else f"1/{world} per GPU")
    note = (f"fsdp over {world} ranks: the transformer's weights, gradients, optimizer state and EMA are {where}, "
            f"plus {gib(gathered):.2f} GiB for two blocks gathered whole at a time; text encoders, VAE and "
            "reward models are whole on every GPU")
    return share, int(gathered), note


def _arch_label(name: str) -> str:
    if os.sep not in name:
        return name
    from grpo_guard.toyworld import BASE_MODEL_DIR

    same = os.path.realpath(name) == os.path.realpath(str(BASE_MODEL_DIR))
    return "the toy base model" if same else os.path.basename(name.rstrip(os.sep))


def auto_rows(config: Any, gpu: GpuSpec, *, device: str = "cuda", spec: PipelineSpec | None = None) -> int:
    """The largest ``update_rows_per_forward`` (transformer rows) whose planned peak fits ``gpu``:
    activations grow linearly in rows, so two measured chunk sizes give the line; the pick is then
    measured, and stepped down while it does not fit. All rows when even the line says so; one
    latent row (its CFG branches) when nothing fits (the plan then says it does not)."""
    spec = spec or spec_for(config)
    branches = _branches(spec, config)
    per_mb = config.train_batch_size * config.num_trained_steps()
    probe = [p for p in (1, 2) if p <= per_mb]

    def plan_at(n: int) -> Plan:
        return _plan_at(config, spec, gpu, device, n, branches, "auto", None)

    p1 = plan_at(probe[0])
    if not p1.fits or per_mb == 1:
        return branches
    p2 = plan_at(probe[-1])
    slope = max(1e-9, p2.needed_gib - p1.needed_gib)
    n = int(probe[0] + (gpu.memory_gib - p1.needed_gib) / slope)
    n = max(1, min(per_mb, n))
    for _ in range(4):
        if n <= 2 or plan_at(n).fits:
            break
        n = max(2, int(n * 0.85))
    return n * branches


def measured_mfu(backbone: str) -> float | None:
    """The policy update's MFU measured by the GPU check (``benchmarks/gpu/results/check.json``), if
    a GPU has run it in this checkout; ``GG_PLAN_MFU`` overrides."""
    env = os.environ.get("GG_PLAN_MFU")
    if env:
        try:
            value = float(env)
            return value if 0 < value <= 1 else None
        except ValueError:
            return None
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "benchmarks", "gpu", "results", "check.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("backbone") == backbone and isinstance(node.get("mfu"), (int, float)) and node["mfu"] > 0:
                found.append(float(node["mfu"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return sorted(found)[len(found) // 2] if found else None

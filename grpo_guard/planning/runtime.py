"""The plan where a run meets its GPU: ``auto`` rows per forward, a worker's refusal before weights
load, and the message a CUDA out-of-memory error ends a run with.

The GPU memory a run is planned against: ``GG_GPU_MEMORY_GIB`` if set (tests, a shared GPU), else
the CUDA device's ``total_memory``; a CPU process without the variable has no GPU to fit.
"""

from __future__ import annotations

import logging
from typing import Any

from grpo_guard.planning.gpus import GpuSpec, env_gpu_memory, gpu_from_memory
from grpo_guard.planning.spec import PlanError

log = logging.getLogger("grpo_guard.planning")
GIB = 1 << 30
# On a CPU there is no device memory to fit, but the process's memory grows with the rows of one
# forward while two cores gain nothing past a few dozen rows. The toy example (288 rows a
# micro-batch): 8.4–8.9 s an epoch at 72 rows against 8.3–8.4 s at 288, peak RSS 1.04 GB against
# 2.23 GB (quiet 2-core machine; benchmarks/trainer/README.md).
CPU_AUTO_ROWS = 72


def device_gpu(device: Any = None) -> GpuSpec | None:
    """The GPU this process plans against (see the module docstring), or None."""
    env = env_gpu_memory()
    if env is not None:
        return gpu_from_memory(env)
    import torch

    dev = torch.device(device) if device is not None else (torch.device("cuda") if torch.cuda.is_available() else None)
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(dev.index or 0)
    return gpu_from_memory(round(props.total_memory / GIB, 2))


def resolve_rows_per_forward(config: Any, device: Any = None) -> tuple[int | None, str]:
    """``update_rows_per_forward`` as a number of transformer rows for this process (None: all rows
    at once), and a log line saying how it was chosen."""
    rows = config.update_rows_per_forward
    if rows != "auto":
        return int(rows), f"update rows per forward: {rows} (set in the config)"
    gpu = device_gpu(device)
    if gpu is None:
        return CPU_AUTO_ROWS, (f"update_rows_per_forward auto: {CPU_AUTO_ROWS} rows per forward on CPU "
                               "(no GPU to fit; host memory grows with the rows, speed does not)")
    from grpo_guard.planning.plan import auto_rows

    try:
        n = auto_rows(config, gpu, device="cuda")
    except PlanError as e:
        return None, f"update_rows_per_forward auto: all rows per forward (no plan: {e})"
    return n, f"update_rows_per_forward auto: {n} rows per forward fit the {gpu.memory_gib:g} GiB GPU"


def refusal(config: Any, device: Any = None) -> str | None:
    """One sentence with the figures when the run's plan does not fit this process's GPU, else None
    (also when there is no GPU to fit or no plan can be made: the run then goes ahead)."""
    gpu = device_gpu(device)
    if gpu is None:
        return None
    from grpo_guard.planning.plan import make_plan

    try:
        plan = make_plan(config, gpu)
    except PlanError as e:
        log.warning("no memory plan for this run (%s); starting it unchecked", e)
        return None
    if plan.fits:
        return None
    return (f"the run's plan does not fit this worker's GPU: {plan.summary()}; {fitting_setting(config, gpu)}, "
            "or run it on a larger GPU")


def fitting_setting(config: Any, gpu: GpuSpec) -> str:
    """A change of settings whose plan fits ``gpu``, as advice (``set update_rows_per_forward: 8``)."""
    from grpo_guard.planning.plan import make_plan

    tries: list[dict[str, Any]] = []
    for ckpt in ([config.gradient_checkpointing] + ([True] if not config.gradient_checkpointing else [])):
        tries.append({"gradient_checkpointing": ckpt, "update_rows_per_forward": "auto"})
    for changes in tries:
        try:
            cfg = config.with_overrides(changes)
            from grpo_guard.planning.plan import auto_rows

            rows = auto_rows(cfg, gpu)
            plan = make_plan(cfg, gpu, rows=rows)
        except (PlanError, ValueError):
            continue
        if plan.fits:
            parts = [f"update_rows_per_forward: {plan.rows_per_forward}"]
            if changes["gradient_checkpointing"] != config.gradient_checkpointing:
                parts.append("gradient_checkpointing: true")
            return f"set {' and '.join(parts)} (planned peak {plan.peak_gib:.1f} GiB)"
    return ("no setting of update_rows_per_forward or gradient_checkpointing fits it: lower sample_batch_size, "
            "put reward models on the CPU (reward_options NAME.device: cpu) or use LoRA")


class GpuOutOfMemory(RuntimeError):
    """A CUDA out-of-memory error, explained with the run's plan; the run stays resumable."""


def out_of_memory_message(config: Any, phase: str, epoch: int, device: Any = None) -> str:
    """What a run that hit CUDA OOM in ``phase`` ends with: the plan's figures and a setting that fits."""
    head = f"CUDA ran out of memory in the {phase} of epoch {epoch}"
    gpu = device_gpu(device)
    if gpu is None:
        return f"{head}; lower update_rows_per_forward or sample_batch_size and resume the run"
    from grpo_guard.planning.plan import make_plan

    try:
        plan = make_plan(config, gpu)
        advice = fitting_setting(config, gpu)
    except PlanError as e:
        return f"{head} (no plan: {e}); lower update_rows_per_forward or sample_batch_size and resume the run"
    if phase == "sampling" and plan.fits:
        advice = f"set sample_batch_size: {max(1, config.sample_batch_size // 2)}"
    return f"{head}: {plan.summary()}; {advice}, and resume the run (it continues from its last checkpoint)"

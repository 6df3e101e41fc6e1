"""GPU presets for plans (torch-free: the app and the CLI's option parsing use them).

Memory is what ``torch.cuda.get_device_properties(0).total_memory`` reports for the card's nominal
size (the nominal GB as GiB, rounded down a little: an "80 GB" H100 reports 79.1 GiB); peak rates
are the dense bf16 tensor-core figures of the vendors' data sheets (as benchmarks/gpu/flops.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str              # preset key, or "custom"
    label: str             # what a plan prints
    memory_gib: float
    bf16_tflops: float


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("h100", "H100 80GB", 79.1, 989.0),
    "a100-80": GpuSpec("a100-80", "A100 80GB", 79.1, 312.0),
    "a100-40": GpuSpec("a100-40", "A100 40GB", 39.4, 312.0),
    "h200": GpuSpec("h200", "H200 141GB", 139.8, 989.0),
    "l40s": GpuSpec("l40s", "L40S 48GB", 44.4, 362.0),
    "4090": GpuSpec("4090", "RTX 4090 24GB", 23.6, 165.0),
}


def gpu_from_memory(memory_gib: float, like: str | None = None) -> GpuSpec:
    """A GPU of ``memory_gib`` GiB with the peak rate of preset ``like`` (default the H100's)."""
    if not (memory_gib > 0 and memory_gib < 1e6):
        raise ValueError(f"GPU memory must be a positive number of GiB, got {memory_gib!r}")
    base = GPUS.get(like or "h100", GPUS["h100"])
    return GpuSpec("custom", f"{memory_gib:g} GiB GPU", float(memory_gib), base.bf16_tflops)


def env_gpu_memory() -> float | None:
    """``GG_GPU_MEMORY_GIB``: the GPU memory a worker plans against instead of its detected device's
    (tests; a GPU shared with other work). Unset or invalid: None."""
    raw = os.environ.get("GG_GPU_MEMORY_GIB", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value < 1e6 else None

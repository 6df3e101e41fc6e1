"""The memory plan on the New-run form: ``grpo-guard plan`` in a subprocess (torch and the fake-tensor
measurement stay out of the app process; the page stays responsive while it runs, and repeated
plans of the same architecture settings come from the plan cache in seconds), rendered as HTML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from app.common import esc
from grpo_guard.config import RunConfig
from grpo_guard.planning.gpus import GPUS

GPU_CHOICES = [(f"{g.label} ({g.memory_gib:g} GiB)", k) for k, g in GPUS.items()]


def _timeout() -> float:
    try:
        return max(10.0, float(os.environ.get("GG_PLAN_TIMEOUT", "300")))
    except ValueError:
        return 300.0


def run_plan(cfg: RunConfig, gpu: str) -> tuple[dict[str, Any] | None, str]:
    """(plan as a dict, "") or (None, why it could not be made)."""
    if gpu not in GPUS:
        return None, f"unknown GPU {gpu!r}"
    with tempfile.TemporaryDirectory(prefix="gg-plan-") as d:
        path = os.path.join(d, "run.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(cfg.to_yaml())
        try:
            proc = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "plan", path, "--gpu", gpu, "--json"],
                                  capture_output=True, text=True, timeout=_timeout(), env=dict(os.environ))
        except subprocess.TimeoutExpired:
            return None, f"the plan took longer than {_timeout():g} s (GG_PLAN_TIMEOUT); run `grpo-guard plan` instead"
    if proc.returncode in (0, 1):
        try:
            return json.loads(proc.stdout), ""
        except ValueError:
            pass
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return None, (lines[-1] if lines else f"grpo-guard plan exited with code {proc.returncode}")[:400]


def plan_html(plan: dict[str, Any] | None, error: str = "") -> str:
    """The verdict, the phases and the time, as the form shows them."""
    if plan is None:
        return f'<div class="gg-error" id="gg-plan"><b>No plan:</b> {esc(error)}</div>'
    fits = bool(plan["fits"])
    head = (f'<b>{"Fits" if fits else "Does not fit"}</b> the {esc(plan["gpu"])} ({plan["gpu_memory_gib"]:g} GiB): '
            f'planned peak {plan["peak_gib"]:.1f} GiB per GPU in the {esc(plan["peak_phase"])} '
            f'(mostly {esc(plan["dominant"])}), {plan["needed_gib"]:.1f} GiB with the margin; '
            f'update rows per forward {plan["rows_per_forward"]} of {plan["rows_per_micro_batch"]}.')
    rows = "".join(
        f"<tr><td>{esc(ph)}</td><td>{parts['total']:.1f}</td><td>"
        + esc(", ".join(f"{k} {v:.1f}" for k, v in parts.items() if k != "total" and v >= 0.05)) + "</td></tr>"
        for ph, parts in plan["phases"].items())
    sec = float(plan["epoch_seconds"])
    per_epoch = f"{sec:.2g} s" if sec < 60 else f"{sec / 60:.1f} min"
    time = (f'{per_epoch} per epoch, {plan["gpu_hours"]:.3g} GPU-hours for {plan["epochs"]} epochs at MFU '
            f'{plan["mfu"]:.0%} (sampling and update).')
    return (f'<div class="{"gg-ok" if fits else "gg-error"}" id="gg-plan" data-fits="{str(fits).lower()}" '
            f'data-peak-gib="{plan["peak_gib"]}">{head}<table><tr><th>phase</th><th>GiB</th><th>parts (GiB)</th></tr>'
            f"{rows}</table>{time}</div>")

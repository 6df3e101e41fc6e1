"""``grpo-guard plan`` checked and timed: estimate vs measured peak on the CPU, and full-size plan time.

    python benchmarks/plan/bench_plan.py validate [--out benchmarks/plan/validate.json]
    python benchmarks/plan/bench_plan.py time [--out benchmarks/plan/time.json]

``validate``: for the toy example and the tiny SD3 / FLUX pipelines, the plan's update phase on the
CPU (``grpo_guard.planning.validate.planned_update_peak``) against the peak of live tensors that
``torch.distributed._tools.mem_tracker.MemTracker`` measures over one real micro-batch of the
trainer's ``policy_update`` on real CPU tensors (``measured_update_peak``), with and without
gradient checkpointing.
``time``: each shipped GPU example planned at full size with an empty plan cache (a fresh
``GG_PLAN_CACHE``), one process each, in sequence (examples after the first may reuse the cache),
with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = ["sd35m_grpo_guard", "flux_dance_grpo_guard", "sd35m_flow_grpo", "sd35m_geneval_grpo_guard",
            "sd35m_pickscore_grpo_guard", "sd35m_geneval_flow_grpo"]
SMALL = {"group_size": 4, "prompts_per_epoch": 2, "train_batch_size": 4, "num_steps": 4, "eval_num_steps": 2,
         "sample_batch_size": 8}


def validate() -> list[dict]:
    import torch

    from grpo_guard.config import RunConfig
    from grpo_guard.models import build_backbone, testing
    from grpo_guard.planning.validate import measured_update_peak, planned_update_peak

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="gg-plan-val-")
    cases = [("toy example (288 rows, full fine-tuning)",
              RunConfig.from_file(os.path.join(ROOT, "examples", "toy_grpo_guard.yaml")))]
    for kind, build in (("sd3", testing.tiny_sd3_pipeline_dir), ("flux", testing.tiny_flux_pipeline_dir)):
        cases.append((f"tiny {kind} (LoRA 4)", RunConfig.from_dict(
            {**SMALL, "backbone": kind, "model": build(os.path.join(tmp, kind)), "lora_rank": 4, "resolution": 32})))
    cases.append(("toy small (full fine-tuning)", RunConfig.from_dict({**SMALL, "lora_rank": 0})))
    out = []
    for label, cfg in cases:
        for ckpt in (False, True):
            c = cfg.with_overrides({"gradient_checkpointing": ckpt})
            est = planned_update_peak(c)
            bb = build_backbone(c, device="cpu")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                bb.add_lora(c.lora_rank, c.lora_alpha, c.lora_targets)
            meas = measured_update_peak(c, bb)
            out.append({"case": label, "gradient_checkpointing": ckpt, "estimate_mib": est / 2**20,
                        "measured_mib": meas / 2**20, "error": est / meas - 1})
            print(json.dumps(out[-1]), flush=True)
    return out


def timing() -> list[dict]:
    cache = tempfile.mkdtemp(prefix="gg-plan-cache-")
    out = []
    for name in EXAMPLES:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "plan", os.path.join(ROOT, "examples", f"{name}.yaml"),
                               "--json"], capture_output=True, text=True, env={**os.environ, "GG_PLAN_CACHE": cache})
        wall = time.perf_counter() - t0
        plan = json.loads(proc.stdout) if proc.returncode in (0, 1) else {}
        out.append({"example": name, "wall_s": wall, "load_before": load, "load_after": os.getloadavg()[0],
                    "fits_h100": plan.get("fits"), "peak_gib": plan.get("peak_gib"),
                    "peak_phase": plan.get("peak_phase"), "rows_per_forward": plan.get("rows_per_forward"),
                    "gpu_hours_h100": plan.get("gpu_hours"), "rc": proc.returncode})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["validate", "time"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    res = validate() if args.what == "validate" else timing()
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{args.what}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"cpu_count": os.cpu_count(), "results": res}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

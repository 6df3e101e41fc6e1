"""The GPU check: one command, time-boxed, resumable (``benchmarks/gpu/check.sh`` runs it).

Stages (``--stages``, in this order):

- ``backbones``: ``bench_backbones.py`` for SD3.5-Medium and FLUX.1-dev at full size with random
  weights, at the paper's settings: sampling img/s, update s/step, peak memory, update TFLOP/s
  and MFU. One subprocess per backbone, each with its own time box.
- ``correctness``: ``correctness.py``: ``sde_step`` / ``policy_loss`` on the GPU under bf16
  autocast against the float64 CPU reference (values and gradients), and resume equals
  uninterrupted on the toy backbone.
- ``overopt``: the toy over-optimisation experiment at the paper's batch (``*_paper`` arms of
  ``benchmarks/overoptimization/arms.py`` with their no-signal controls, 3 seeds, all runs side by
  side) through ``benchmarks/overoptimization/run.py --deadline-seconds``: as many epochs as fit.

Everything lands in ``--out`` (default ``benchmarks/gpu/results``): ``check.json`` (every figure)
and ``check.md`` (the tables the READMEs quote), rewritten after each stage. Re-running with the
same ``--out`` skips finished stages and backbones and continues the over-optimisation runs from
their checkpoints. ``--tiny`` runs the same stages on the CPU with tiny models and batches (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from report_md import write_markdown  # noqa: E402

STAGES = ("backbones", "correctness", "overopt")
BACKBONES = ("sd3", "flux")
# Share of the whole budget each stage may take at most (the over-optimisation runs take what is
# left); of the backbone share, FLUX (11.9B) gets the larger part.
STAGE_SHARE = {"backbones": 0.45, "correctness": 0.15}
BACKBONE_SHARE = {"sd3": 0.4, "flux": 0.6}
OVEROPT_ARMS = ["flow_grpo_paper", "grpo_guard_paper", "flow_grpo_paper_null", "grpo_guard_paper_null"]
# Left at the end of the over-optimisation stage for the runs' last epoch, their checkpoints and the report.
OVEROPT_MARGIN_S = {"gpu": 60.0, "tiny": 20.0}
# Full size: one group of 4 images, 2 epochs (the first is warm-up) per algorithm. Estimated for
# FLUX on an H100 (not measured): ~8 s sampling + ~10 s update an epoch, so both algorithms fit
# its ~130 s box with room; the figures are per image and per step, so the batch barely moves them.
BENCH_ARGS = ["--groups", "1", "--group-size", "4", "--epochs", "2"]
TINY_OVEROPT = ["prompts_per_epoch=2", "group_size=4", "train_batch_size=4", "gradient_accumulation_steps=1",
                "num_steps=4", "eval_num_steps=4", "eval_every=1", "eval_seeds=[0]",
                "eval_prompts=[a red circle on a blue background]"]


def owned_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_stage(cmd: list[str], timeout: float, log_path: str, tiny: bool) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, killed as a group when ``timeout`` passes (the
    over-optimisation runner's own children included). Its torch threads: the cores this process
    owns, or one for tiny models, which gain nothing from intra-op threads and on a shared 2-core
    machine ran 2.5× slower with two (spin-waiting)."""
    threads = "1" if tiny else str(owned_cores())
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}  (time box {timeout:.0f}s)\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, timed_out = proc.returncode, True
    return {"rc": rc, "timed_out": timed_out, "wall_s": time.perf_counter() - t0, "time_box_s": timeout}


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# ---- stages --------------------------------------------------------------------------------------
def stage_backbones(args: argparse.Namespace, budget: float, log: str) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "done", "runs": {}, "results": []}
    t_end = time.monotonic() + budget
    for i, kind in enumerate(BACKBONES):
        path = os.path.join(args.out, f"backbones_{kind}.json")
        done = read_json(path)
        if not (done and len(done.get("results", [])) == 2):
            # This backbone's share of the stage, plus whatever the earlier one left unused.
            left = t_end - time.monotonic()
            box = left if i == len(BACKBONES) - 1 else min(left, budget * BACKBONE_SHARE[kind])
            cmd = [sys.executable, os.path.join(HERE, "bench_backbones.py"), "--backbones", kind, "--out", path]
            out["runs"][kind] = run_stage(cmd + (["--tiny"] if args.tiny else BENCH_ARGS), box, log, args.tiny)
            done = read_json(path)
        results = (done or {}).get("results", [])
        out["results"] += results
        run = out["runs"].get(kind)
        if run and run["rc"] != 0 and not run["timed_out"]:
            out["status"] = "failed"
        elif len(results) < 2 and out["status"] != "failed":
            out["status"] = "partial"
    return out


def stage_correctness(args: argparse.Namespace, budget: float, log: str) -> dict[str, Any]:
    path = os.path.join(args.out, "correctness.json")
    cmd = [sys.executable, os.path.join(HERE, "correctness.py"), "--out", path] + (["--tiny"] if args.tiny else [])
    run = run_stage(cmd, budget, log, args.tiny)
    result = read_json(path)
    status = "failed" if result is None else ("done" if result["passed"] else "mismatch")
    return {"status": status, "run": run, "result": result}


def stage_overopt(args: argparse.Namespace, budget: float, log: str) -> dict[str, Any]:
    out = os.path.join(args.out, "overopt")
    seeds = ["0"] if args.tiny else [str(s) for s in args.seeds]
    jobs = 2 if args.tiny else len(OVEROPT_ARMS) * len(seeds)   # every run at once on the one GPU
    margin = OVEROPT_MARGIN_S["tiny" if args.tiny else "gpu"]
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "overoptimization", "run.py"), "--out", out,
           "--arms", *OVEROPT_ARMS, "--seeds", *seeds, "--jobs", str(jobs),
           "--deadline-seconds", str(max(1.0, budget - margin))]
    if args.tiny:
        cmd += ["--epochs", "1"] + [x for item in TINY_OVEROPT for x in ("--set", item)]
    run = run_stage(cmd, budget, log, args.tiny)
    epochs = {}
    for arm in OVEROPT_ARMS:
        for s in seeds:
            progress = read_json(os.path.join(out, "runs", f"{arm}_seed{s}", "progress.json")) or {}
            epochs[f"{arm}_seed{s}"] = [progress.get("step", 0), progress.get("total")]
    finished = all(e[1] and e[0] >= e[1] for e in epochs.values())
    crashed = run["rc"] != 0 and not run["timed_out"]   # a run failed, or the runner did
    status = "failed" if crashed else ("done" if finished else "partial")
    return {"status": status, "run": run, "epochs": epochs, "arms": OVEROPT_ARMS,
            "seeds": [int(s) for s in seeds], "summary": read_json(os.path.join(out, "summary.json")) is not None}


STAGE_FUNCS = {"backbones": stage_backbones, "correctness": stage_correctness, "overopt": stage_overopt}


def environment(tiny: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0],
                            "cuda_available": torch.cuda.is_available(), "cpu_cores": owned_cores()}
    if torch.cuda.is_available() and not tiny:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    gpu_memory_gib=props.total_memory / 2**30)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the same stages on the CPU with tiny models (CI)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results folder (re-use it to resume)")
    p.add_argument("--budget-seconds", type=float, default=480.0, help="wall-clock budget of this call")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="over-optimisation seeds (full size)")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"check: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}.", file=sys.stderr)
        return 2
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("check: no CUDA GPU is visible, so the GPU check cannot run; use --tiny for the CPU run of the "
              "same code.", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    state_path = os.path.join(args.out, "check.json")
    state = read_json(state_path) or {"tiny": args.tiny, "stages": {}, "calls": []}
    if state.get("tiny") != args.tiny:
        print(f"check: {args.out} holds a {'--tiny' if state.get('tiny') else 'GPU'} check; use another --out.",
              file=sys.stderr)
        return 2
    state["environment"] = environment(args.tiny)
    state["calls"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "budget_s": args.budget_seconds, "stages": stages})
    log = os.path.join(args.out, "check.log")
    for name in [s for s in STAGES if s in stages]:
        previous = state["stages"].get(name, {})
        if previous.get("status") == "done":
            print(f"[check] {name}: done in an earlier call, skipped", flush=True)
            continue
        left = args.budget_seconds - (time.monotonic() - t0)
        budget = left if name == "overopt" else min(left, args.budget_seconds * STAGE_SHARE[name])
        if budget < 5:
            print(f"[check] {name}: no time left in this call; run the command again to continue", flush=True)
            continue
        print(f"[check] {name}: up to {budget:.0f}s", flush=True)
        result = STAGE_FUNCS[name](args, budget, log)
        state["stages"][name] = result
        print(f"[check] {name}: {result['status']}", flush=True)
        with open(state_path, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
        write_markdown(state, args.out)
    state["calls"][-1]["wall_s"] = time.monotonic() - t0
    with open(state_path, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
    write_markdown(state, args.out)
    print(f"[check] wrote {state_path} and {os.path.join(args.out, 'check.md')} "
          f"in {state['calls'][-1]['wall_s']:.0f}s", flush=True)
    # Time-boxed stages may stay partial (the next call continues them); a failed or wrong one fails the call.
    bad = [n for n in stages if state["stages"].get(n, {}).get("status") in ("failed", "mismatch")]
    if bad:
        print(f"[check] {', '.join(bad)}: failed or outside tolerance; see check.md and check.log", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

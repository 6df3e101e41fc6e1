"""The toy over-optimisation experiment (the paper's Figure 1 on the shapes world), in one command.

    python benchmarks/overoptimization/run.py [--seeds 0 1 2] [--jobs 2] [--kl] [--arms A ...] [--out DIR]

Runs ``examples/toy_flow_grpo.yaml`` and ``examples/toy_grpo_guard.yaml`` (identical but for the
algorithm) for every seed, and any of the one-key variants in ``ARMS`` (``--arms``: equal advantage
std, β_KL 0.04, other proxies, and the no-signal controls ``*_null`` whose proxy is ``null_noise``)
— as ``grpo-guard train`` subprocesses, ``--jobs`` at a time with one torch thread each. A finished
run is skipped and an interrupted one resumed from its checkpoints, so the command can be re-run;
runs whose directories are gone are reported from the previous ``summary.json``.
Then it writes, under ``--out`` (default ``benchmarks/overoptimization/results``):

- ``figure.png``: eval proxy and eval gold against epoch for each arm (mean over seeds, band = min–max),
  plus gold against proxy (the equal-proxy view);
- ``table.md``: proxy and gold at the start, at the baseline's gold peak and at the end; gold by
  epoch and, where a no-signal control is reported, the gold each arm loses beyond it; gold at equal
  proxy; the per-denoising-step ratio mean and std of each arm; the alarm's onset per run;
- ``summary.json``: the curves behind them.

``--report-only`` redraws from existing run directories.
"""


from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from arms import ARMS, HERE, ROOT, run_dir
from report import report


# ---- running ------------------------------------------------------------------------------------
def finished(path: str) -> bool:
    try:
        with open(os.path.join(path, "progress.json")) as fh:
            p = json.load(fh)
        return p["step"] >= p["total"] and os.path.exists(os.path.join(path, "done"))
    except (OSError, ValueError, KeyError):
        return False


def command(arm: str, seed: int, path: str, epochs: int | None) -> list[str]:
    cfg, extra, _ = ARMS[arm]
    cmd = [sys.executable, "-m", "grpo_guard.cli", "train", os.path.join(ROOT, cfg), "--out", path,
           "--set", f"seed={seed}"]
    for item in extra:
        cmd += ["--set", item]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    ckpts = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpts) and any(f.endswith(".pt") for f in os.listdir(ckpts)):
        cmd += ["--resume", ckpts]
    return cmd


def run_all(arms: list[str], seeds: list[int], out: str, jobs: int, epochs: int | None) -> None:
    todo = [(a, s) for s in seeds for a in arms if not finished(run_dir(out, a, s))]
    running: list[tuple[subprocess.Popen, str, str]] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TQDM_MININTERVAL="30")
    while todo or running:
        while todo and len(running) < jobs:
            arm, seed = todo.pop(0)
            path = run_dir(out, arm, seed)
            os.makedirs(path, exist_ok=True)
            log = open(os.path.join(path, "stdout.log"), "a")  # noqa: SIM115 (closed when the run ends)
            print(f"[{time.strftime('%H:%M:%S')}] start {arm} seed {seed}", flush=True)
            running.append((subprocess.Popen(command(arm, seed, path, epochs), cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT), path, log))
        time.sleep(5)
        for item in list(running):
            proc, path, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                if proc.returncode == 0:
                    open(os.path.join(path, "done"), "w").close()
                print(f"[{time.strftime('%H:%M:%S')}] {status}: {path}", flush=True)



def main() -> None:
    ap = argparse.ArgumentParser(description="Toy over-optimisation experiment: Flow-GRPO vs GRPO-Guard.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--kl", action="store_true", help="add the KL-regularised Flow-GRPO arm (kl_beta 0.04)")
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=None,
                    help="arms to run and report, baseline first (default: flow_grpo grpo_guard [flow_grpo_kl])")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    arms = args.arms or ["flow_grpo", "grpo_guard"] + (["flow_grpo_kl"] if args.kl else [])
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
        run_all(arms, args.seeds, args.out, args.jobs, args.epochs)
    print(report(arms, args.seeds, args.out))


if __name__ == "__main__":
    main()

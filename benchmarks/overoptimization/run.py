"""The toy over-optimisation experiment (the paper's Figure 1 on the shapes world), in one command.

    python benchmarks/overoptimization/run.py [--seeds 0 1 2] [--jobs 2] [--kl] [--arms A ...] [--out DIR]
        [--set KEY=VALUE ...] [--deadline-seconds N]

Runs ``examples/toy_flow_grpo.yaml`` and ``examples/toy_grpo_guard.yaml`` (identical but for the
algorithm) for every seed, and any of the one-key variants in ``ARMS`` (``--arms``: equal advantage
std, β_KL 0.04, other proxies, and the no-signal controls ``*_null`` whose proxy is ``null_noise``)
— as ``grpo-guard train`` subprocesses, ``--jobs`` at a time, each pinned to its own share of the
CPU cores with that many torch threads. A finished run is skipped and an interrupted one resumed
from its checkpoints, so the command can be re-run; runs whose directories are gone are reported
from the previous ``summary.json``. ``--set`` overrides a config key in every run (after the arm's
own); ``--deadline-seconds`` stops every run at its next epoch boundary, with a checkpoint, once
that much time has passed, so a time-boxed call trains as many epochs as fit and the next call
continues them (``benchmarks/gpu/check.sh`` runs the paper-batch arms this way).
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
import signal
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


def command(arm: str, seed: int, path: str, epochs: int | None, overrides: list[str] = ()) -> list[str]:
    cfg, extra, _ = ARMS[arm]
    cmd = [sys.executable, "-m", "grpo_guard.cli", "train", os.path.join(ROOT, cfg), "--out", path,
           "--set", f"seed={seed}"]
    for item in [*extra, *overrides]:
        cmd += ["--set", item]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    ckpts = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpts) and any(f.endswith(".pt") for f in os.listdir(ckpts)):
        cmd += ["--resume", ckpts]
    return cmd


def core_slots(jobs: int) -> list[list[int]]:
    """The CPU cores this process may use, split into ``jobs`` disjoint slices of near-equal size
    (one core each, round-robin, when there are fewer cores than jobs): torch's default of one
    thread per visible core collapses when several runs share few cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = len(cores)
    if jobs >= n:
        return [[cores[i % n]] for i in range(jobs)]
    return [cores[i * n // jobs:(i + 1) * n // jobs] for i in range(jobs)]


def run_all(arms: list[str], seeds: list[int], out: str, jobs: int, epochs: int | None,
            overrides: list[str] = (), deadline: float | None = None) -> list[str]:
    """Run every unfinished (arm, seed); returns the run directories whose process failed (a run
    stopped at the deadline is not a failure, even if Ctrl-C reached it before its handler was set)."""
    failed: list[str] = []
    todo = [(a, s) for s in seeds for a in arms if not finished(run_dir(out, a, s))]
    running: list[tuple[subprocess.Popen, str, object, int]] = []
    free = list(range(jobs))
    slots = core_slots(jobs)
    base_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_MININTERVAL="30")
    stopping = False
    while todo or running:
        while todo and free and not stopping:
            arm, seed = todo.pop(0)
            path = run_dir(out, arm, seed)
            os.makedirs(path, exist_ok=True)
            slot = free.pop(0)
            threads = str(len(slots[slot]))
            env = dict(base_env, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            pin = (lambda cores=slots[slot]: os.sched_setaffinity(0, cores)) if hasattr(os, "sched_setaffinity") else None
            log = open(os.path.join(path, "stdout.log"), "a")  # noqa: SIM115 (closed when the run ends)
            print(f"[{time.strftime('%H:%M:%S')}] start {arm} seed {seed} on cores {slots[slot]}", flush=True)
            running.append((subprocess.Popen(command(arm, seed, path, epochs, overrides), cwd=ROOT, env=env,
                                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin), path, log, slot))
        time.sleep(1 if deadline is not None else 5)
        if deadline is not None and not stopping and time.time() >= deadline:
            # Ctrl-C for `grpo-guard train`: stop after the current epoch with a checkpoint.
            stopping = True
            print(f"[{time.strftime('%H:%M:%S')}] deadline: stopping {len(running)} runs at their next epoch; "
                  f"{len(todo)} not started", flush=True)
            for proc, *_ in running:
                proc.send_signal(signal.SIGINT)
            todo.clear()
        for item in list(running):
            proc, path, log, slot = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                free.append(slot)
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                if proc.returncode == 0:
                    open(os.path.join(path, "done"), "w").close()
                elif not (stopping and proc.returncode == -signal.SIGINT):  # Ctrl-C before its handler
                    failed.append(path)
                print(f"[{time.strftime('%H:%M:%S')}] {status}: {path}", flush=True)
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description="Toy over-optimisation experiment: Flow-GRPO vs GRPO-Guard.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, each pinned to its share of the cores")
    ap.add_argument("--kl", action="store_true", help="add the KL-regularised Flow-GRPO arm (kl_beta 0.04)")
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=None,
                    help="arms to run and report, baseline first (default: flow_grpo grpo_guard [flow_grpo_kl])")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key in every run (repeatable; applied after the arm's own)")
    ap.add_argument("--deadline-seconds", type=float, default=None,
                    help="stop every run at its next epoch (with a checkpoint) after this long; re-run to continue")
    args = ap.parse_args()
    arms = args.arms or ["flow_grpo", "grpo_guard"] + (["flow_grpo_kl"] if args.kl else [])
    os.makedirs(args.out, exist_ok=True)
    failed: list[str] = []
    if not args.report_only:
        deadline = time.time() + args.deadline_seconds if args.deadline_seconds is not None else None
        failed = run_all(arms, args.seeds, args.out, args.jobs, args.epochs, args.overrides, deadline)
    print(report(arms, args.seeds, args.out))
    if failed:
        print(f"{len(failed)} run(s) failed; see stdout.log in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

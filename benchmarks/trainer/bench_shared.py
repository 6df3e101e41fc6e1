"""A toy epoch on a quiet and on a shared CPU, before and after the CPU settings, plus peak RSS.

Each measurement is a real ``grpo-guard train`` process (``python -m grpo_guard.cli train``) on the
settings of bench_epoch.py (8 prompts × 8 images, 10 steps, full CFG gradient, micro-batches of 8
with accumulation 2, float32, no KL), run for ``--epochs`` epochs; the figure is the trainer's own
``time/epoch`` of the epochs after the first (a warm-up), and the process's peak RSS (``wait4``'s
``ru_maxrss``) with its context switches.

Arms (``--arms``):
- ``before``: ``GG_CPU_TUNING=0`` — the behaviour of git main before grpo_guard/training/cpu.py
  (libgomp's default spinning waits).
- ``after``: the shipped defaults: the thread governor (grpo_guard/training/threads.py) with
  libgomp's own waits (OMP_WAIT_POLICY=PASSIVE only where the governor cannot act).
- ``after-malloc``: ``after`` plus ``MALLOC_MMAP_THRESHOLD_=1048576`` (lower peak RSS, not a default).
- ``after-1t``: ``after`` with one torch thread (OMP_NUM_THREADS=1), to see whether fewer threads
  would serve a shared machine better.
- ``passive-fixed``: OMP_WAIT_POLICY=PASSIVE, torch threads fixed (the thread governor off).
- ``gov-spin`` / ``gov-passive``: the thread governor (grpo_guard/training/threads.py) with
  libgomp's default spinning waits / with PASSIVE.
- ``spin-10k`` / ``spin-100k``: the governor with GOMP_SPINCOUNT=10000 / 100000.

Conditions: ``quiet`` (nothing of ours beside it; other users' load is recorded with every figure),
``busy`` (one competitor process beside it: ``python -c "while True: pass"``, a single pure-
Python busy loop, unpinned, started 1 s before the run in the same session and killed after it)
and ``pair`` (two identical training processes of the arm at once, as ``grpo-guard serve``'s two
embedded workers run an A/B pair; the figure is over both).

Rounds alternate the order of the arms (A B, then B A, ...) so that load drift hits every arm alike.
Variables the user set (OMP_WAIT_POLICY, MALLOC_*, OMP_NUM_THREADS) are removed from every arm's
environment, so each arm measures what it names.

    python benchmarks/trainer/bench_shared.py [--rounds 2] [--epochs 2] [--arms before,after] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_epoch import bench_config  # noqa: E402

from grpo_guard.training import cpu, threads  # noqa: E402

ARMS = ("before", "after", "after-1t", "after-malloc", "spin-10k", "spin-100k", "passive-fixed", "gov-spin",
        "gov-passive")
CONDITIONS = ("quiet", "busy", "pair")
COMPETITOR = [sys.executable, "-c", "while True: pass"]
SCRUB = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
         "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", cpu.SWITCH, threads.SWITCH, cpu.THREADS_FROM_QUOTA)


def arm_env(arm: str) -> dict[str, str]:
    """The environment of one arm's training process."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
    if arm == "before":
        env[cpu.SWITCH] = "0"
    elif arm == "after-1t":
        env["OMP_NUM_THREADS"] = "1"
    elif arm == "after-malloc":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    elif arm == "passive-fixed":  # sleeping OpenMP waits, torch threads fixed (no governor)
        env.update(OMP_WAIT_POLICY="PASSIVE", **{threads.SWITCH: "0"})
    elif arm == "gov-spin":  # the governor with libgomp's own default wait (300,000 spins)
        env["GOMP_SPINCOUNT"] = "300000"
    elif arm == "gov-passive":  # the governor with sleeping waits
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif arm.startswith("spin-"):  # libgomp spins this many times before it sleeps (a user value: kept)
        env["GOMP_SPINCOUNT"] = str(int(arm.removeprefix("spin-").replace("k", "000")))
    return env


def load_now() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _read_scalars(out: str) -> tuple[dict[int, float], dict[str, float]]:
    epochs_s: dict[int, float] = {}
    metrics: dict[str, float] = {}  # every logged value but the timings: must not depend on the arm
    with open(os.path.join(out, "scalars.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if "time/epoch" in row:
                epochs_s[int(row["step"])] = float(row["time/epoch"])
            metrics.update({f"{row['step']}:{k}": v for k, v in row.items()
                            if k not in ("step", "wall_time", "timestamp") and not k.startswith("time/")})
    return epochs_s, metrics


def run_once(config_path: str, arm: str, condition: str, epochs: int) -> dict:
    """One ``grpo-guard train`` process (two at once for ``pair``); epoch times, peak RSS and
    context switches (of both, for ``pair``)."""
    competitor = None
    if condition == "busy":
        competitor = subprocess.Popen(COMPETITOR)
        time.sleep(1.0)
    load = load_now()
    with tempfile.TemporaryDirectory(prefix="gg-bench-shared-") as tmp:
        outs = [os.path.join(tmp, f"run{i}") for i in range(2 if condition == "pair" else 1)]
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "train", config_path, "--epochs",
                                   str(epochs), "--out", out], env=arm_env(arm), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for out in outs]
        usages = {}
        try:
            while len(usages) < len(procs):
                pid, status, usage = os.wait4(-1, 0)
                proc = next((p for p in procs if p.pid == pid), None)
                if proc is not None:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    usages[pid] = usage
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        wall = time.perf_counter() - t
        for proc in procs:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.returncode != 0:
                raise SystemExit(f"{arm}/{condition}: grpo-guard train exited {proc.returncode}:\n{err[-2000:]}")
        read = [_read_scalars(out) for out in outs]
    epochs_s, metrics = read[0]
    measured = [v for e, _ in read for s, v in sorted(e.items()) if s > 1] or list(epochs_s.values())
    us = list(usages.values())
    return {"arm": arm, "condition": condition, "epoch_s": measured, "all_epochs_s": epochs_s, "wall_s": wall,
            "metrics": metrics,
            "peak_rss_mb": max(u.ru_maxrss for u in us) / 1024, "ctx_switches": sum(u.ru_nvcsw + u.ru_nivcsw for u in us),
            "voluntary_ctx": sum(u.ru_nvcsw for u in us), "load_at_start": load, "load_at_end": load_now()}


def summarize(runs: list[dict], arms: list[str]) -> tuple[str, dict]:
    def med(arm: str, cond: str, key: str) -> float:
        vals = [v for r in runs if r["arm"] == arm and r["condition"] == cond
                for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        return statistics.median(vals) if vals else float("nan")

    conds = [c for c in CONDITIONS if any(r["condition"] == c for r in runs)]
    table = {a: {c: {k: med(a, c, k) for k in ("epoch_s", "peak_rss_mb", "ctx_switches", "load_at_start")}
                 for c in conds} for a in arms}
    lines = ["| arm | " + " | ".join(f"{c} s/epoch" for c in conds) + " | peak RSS (MB) " + " / ".join(conds)
             + " | context switches | load (1 min) |", "|---|" + "---|" * (len(conds) + 3)]
    for a in arms:
        row = table[a]
        lines.append(f"| {a} | " + " | ".join(f"{row[c]['epoch_s']:.2f}" for c in conds) + " | "
                     + " / ".join(f"{row[c]['peak_rss_mb']:.0f}" for c in conds) + " | "
                     + " / ".join(f"{row[c]['ctx_switches']:.0f}" for c in conds) + " | "
                     + " / ".join(f"{row[c]['load_at_start']:.1f}" for c in conds) + " |")
    # The settings change no math, but a thread count that changes (the governor, or OMP_NUM_THREADS=1)
    # changes float rounding in full reductions; so: identical where the count was fixed, else the
    # largest relative difference from the first run.
    lines.append("")
    ref = runs[0]["metrics"]
    for a in arms:
        for r in (r for r in runs if r["arm"] == a):
            if set(r["metrics"]) != set(ref):
                lines.append(f"\n{a}/{r['condition']}: logged keys DIFFER from the first run")
                continue
            rel = max((abs(v - ref[k]) / max(abs(ref[k]), 1e-12) for k, v in r["metrics"].items()
                       if isinstance(v, (int, float)) and v == v and ref[k] == ref[k]), default=0.0)
            r["metrics_max_rel_diff"] = rel
        rels = [r["metrics_max_rel_diff"] for r in runs if r["arm"] == a and "metrics_max_rel_diff" in r]
        if rels:
            lines.append(f"metrics of {a} against the first run ({len(ref)} logged values): "
                         + ("identical" if max(rels) == 0 else f"largest relative difference {max(rels):.1e}"))
    if "before" in table and "after" in table and {"quiet", "busy"} <= set(conds):
        quiet = table["after"]["quiet"]["epoch_s"] / table["before"]["quiet"]["epoch_s"]
        busy = table["after"]["busy"]["epoch_s"] / table["before"]["busy"]["epoch_s"]
        lines.append(f"after / before, quiet: {quiet:.3f} ({(quiet - 1) * 100:+.1f} %); busy: {busy:.3f}")
    return "\n".join(lines), table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (each runs every arm × condition once)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is a warm-up)")
    ap.add_argument("--arms", default="before,after", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--conditions", default="quiet,busy", help="comma-separated, of quiet, busy, pair")
    ap.add_argument("--model", default=None, help="toy pipeline directory (default: the shipped base model)")
    ap.add_argument("--json", default=None, help="also write every run here")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    bad = [a for a in arms if a not in ARMS] + [c for c in conds if c not in CONDITIONS]
    if bad or not arms or not conds or args.rounds < 1 or args.epochs < 1:
        ap.error(f"unknown arm or condition {bad}, or nothing to run")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"start: {uptime}; {cpu.owned_cores()} owned cores", file=sys.stderr)
    runs: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gg-bench-shared-cfg-") as tmp:
        config_path = os.path.join(tmp, "toy.yaml")
        with open(config_path, "w", encoding="utf-8") as fh:
            fh.write(bench_config("grpo_guard", args.model, args.epochs).to_yaml())
        for rnd in range(args.rounds):
            order = arms if rnd % 2 == 0 else arms[::-1]
            for cond in (conds if rnd % 2 == 0 else conds[::-1]):
                for arm in order:
                    r = run_once(config_path, arm, cond, args.epochs)
                    r["round"] = rnd
                    runs.append(r)
                    print(f"round {rnd} {arm:8s} {cond:5s}: {statistics.median(r['epoch_s']):6.2f} s/epoch, "
                          f"peak RSS {r['peak_rss_mb']:5.0f} MB, {r['ctx_switches']} ctx switches, "
                          f"load {r['load_at_start']:.1f}", file=sys.stderr)
    end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text, table = summarize(runs, arms)
    print(f"\n{args.rounds} alternating rounds, {args.epochs} epochs per run (first dropped), medians; "
          f"{time.perf_counter() - t0:.0f} s in all; start: {uptime}; end: {end}\n")
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"runs": runs, "median": table, "uptime_start": uptime, "uptime_end": end,
                       "rounds": args.rounds, "epochs": args.epochs}, fh, indent=1)


if __name__ == "__main__":
    main()

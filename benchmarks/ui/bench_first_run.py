"""The first run, as a new user gets it: `grpo-guard serve` on a fresh data directory (embedded
broker and workers, SQLite), then the toy A/B pair enqueued exactly as the New-run page's A/B
submit does it (``run_form.ab_form_configs`` on the "toy GRPO-Guard" preset, then
``worker.submit.submit_runs``). Two measures:

1. **A/B to first points**: seconds from the submit to the first training-step point
   (``reward/total/mean``) of *both* arms in the store, with the workers' start, the step-0
   eval and the first epoch of each arm from the trainer's own ``time/*`` scalars.
2. **Epoch in the product** (``--epoch``): one run at ``benchmarks/trainer/bench_epoch.py``'s
   settings through the served product, its ``time/epoch`` against that benchmark's trainer
   loop run in this process right after, on the same threads as one embedded worker.

    python benchmarks/ui/bench_first_run.py [--epoch [--skip-ab]] [--workers N] [--epochs 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
FIRST_POINT = "reward/total/mean"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(data: str, workers: int | None) -> tuple[subprocess.Popen, str]:
    """`grpo-guard serve` on ``data`` (this process shares its store through GG_DATA_DIR)."""
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS", "GG_BROKER_URL", "GG_AUTH", "GG_AUTH_FILE", "GG_TRAINER"):
        os.environ.pop(k, None)
    os.environ["GG_DATA_DIR"] = data
    port = _free_port()
    cmd = [sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdout=open(os.path.join(data, "serve.log"), "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"grpo-guard serve exited with {proc.returncode}; see {data}/serve.log")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("grpo-guard serve did not answer /health within 300 s")


def stop_serve(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def first_point(q, run_id: int) -> int | None:
    steps, _ = q.metric_series(run_id, [FIRST_POINT]).get(FIRST_POINT, ([], []))
    return steps[0] if steps else None


def scalar_at(q, run_id: int, key: str, step: int) -> float | None:
    steps, vals = q.metric_series(run_id, [key]).get(key, ([], []))
    return next((v for s, v in zip(steps, vals, strict=True) if s == step), None)


def ab_to_first_points(timeout: float) -> dict:
    from app.run_form import ab_form_configs, load_preset
    from grpo_guard.store import queries as q
    from worker.submit import submit_runs

    configs, errors = ab_form_configs(load_preset("toy GRPO-Guard"))
    assert not errors, errors
    t0 = time.monotonic()
    done = submit_runs(configs, name="first run")
    ids = list(done.ids)
    assert not done.warnings, done.warnings
    seen: dict[int, dict] = {}
    while len(seen) < len(ids) and time.monotonic() - t0 < timeout:
        for rid in ids:
            if rid in seen:
                continue
            run = q.get_run(rid)
            if run.status in ("failed", "cancelled"):
                raise SystemExit(f"run #{rid} {run.status}: {run.error}")
            step = first_point(q, rid)
            if step is not None:
                seen[rid] = {"run": rid, "algorithm": run.algorithm, "first_point_s": round(time.monotonic() - t0, 1),
                             "step": step, "started_after_s": round((run.started_at - run.enqueued_at).total_seconds(), 1)
                             if run.started_at and run.enqueued_at else None,
                             "eval_step0_s": scalar_at(q, rid, "time/eval", 0),
                             "sample_s": scalar_at(q, rid, "time/sample", step),
                             "update_s": scalar_at(q, rid, "time/update", step)}
        time.sleep(0.5)
    for rid in ids:
        q.request_stop(rid)
    if len(seen) < len(ids):
        raise SystemExit(f"no first point for every arm within {timeout:.0f} s: {seen}")
    return {"arms": list(seen.values()), "both_s": max(a["first_point_s"] for a in seen.values())}


def epoch_in_product(epochs: int, threads: int, timeout: float) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks", "trainer"))
    from bench_epoch import bench_config, run_arm

    from grpo_guard.store import queries as q
    from worker.celery_app import enqueue_run

    cfg = bench_config("flow_grpo", None, epochs)
    rid = q.create_run(cfg, name="bench epoch")
    enqueue_run(rid)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        run = q.get_run(rid)
        if run.status not in ("queued", "running", "stopping"):
            break
        time.sleep(1)
    steps, vals = q.metric_series(rid, ["time/epoch"]).get("time/epoch", ([], []))
    served = [v for s, v in zip(steps, vals, strict=True) if s > 1]  # as bench_epoch: the first is a warm-up
    return {"run": rid, "status": q.get_run(rid).status, "served": served, "threads": threads,
            "_arm": lambda: run_arm("flow_grpo", None, epochs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="embedded workers (default: serve's own plan)")
    ap.add_argument("--epoch", action="store_true", help="also compare a toy epoch in the product with bench_epoch")
    ap.add_argument("--skip-ab", action="store_true", help="skip the A/B measure (with --epoch)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the --epoch comparison (the first is a warm-up)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from app.cli import embedded_plan
    from grpo_guard.quiet import silence_library_noise

    silence_library_noise()
    plan = embedded_plan(workers=args.workers)
    load = os.getloadavg()[0]
    out: dict = {"cores": os.cpu_count(), "worker_threads": plan, "load_avg_start": round(load, 1)}
    with tempfile.TemporaryDirectory(prefix="gg-first-run-") as data:
        proc, _ = start_serve(data, args.workers)
        try:
            if not args.skip_ab:
                out["ab"] = ab_to_first_points(args.timeout)
            if args.epoch:
                while any(r.status in ("running", "stopping") for r in _runs()):
                    time.sleep(1)  # the pair has stopped: the epoch run has the machine to itself
                ep = epoch_in_product(args.epochs, plan[0], args.timeout)
        finally:
            stop_serve(proc)
        if args.epoch:
            import torch

            torch.set_num_threads(plan[0])
            ref = ep.pop("_arm")()["time/epoch"]
            ep["bench_epoch"] = ref
            ep["served_mean"] = sum(ep["served"]) / max(1, len(ep["served"]))
            ep["bench_mean"] = sum(ref) / max(1, len(ref))
            ep["ratio"] = ep["served_mean"] / ep["bench_mean"]
            out["epoch"] = ep
    out["load_avg_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out, indent=1, default=str))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)


def _runs():
    from grpo_guard.store import queries as q

    return q.list_runs()


if __name__ == "__main__":
    main()

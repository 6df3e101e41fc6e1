"""Soak: 2 real worker processes, 6 runs kept in flight, random stops / resumes / kill -9 of a
worker for N minutes; then every run is driven to its end and its history is checked step by
step (nothing lost, nothing duplicated, every replayed value equal to what an uninterrupted run
logs).

The runs use the trainer double (``tests.worker.fake_trainer``: the trainer's contract, steps
of GG_FAKE_STEP_SECONDS), so the soak measures the job layer and the store, not the GPU.
``--trainer real`` uses the real toy trainer instead (slow on CPU).

    python benchmarks/soak/soak.py --minutes 20                  # SQLite + embedded broker
    python benchmarks/soak/soak.py --minutes 20 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test \
        --broker redis://127.0.0.1:6379/14

Prints a JSON summary and writes it to --out (default benchmarks/soak/last_run.json).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

EPOCHS, NUM_STEPS, EVAL_EVERY, CKPT_EVERY = 120, 3, 10, 5


def check_history(run_id: int) -> list[str]:
    """Problems with a finished run's rows (empty: continuous and exact)."""
    from grpo_guard.store import queries
    from tests.worker import fake_trainer

    problems = []
    steps, values = queries.metric_series(run_id, ["loss"], max_points=10**6).get("loss", ([], []))
    want = list(range(1, EPOCHS + 1))
    if steps != want:
        missing = sorted(set(want) - set(steps))
        extra = len(steps) - len(set(steps))
        problems.append(f"run {run_id}: loss steps missing {missing[:10]} duplicated {extra}")
    elif values != [fake_trainer.loss_at(k) for k in steps]:
        problems.append(f"run {run_id}: a replayed step kept a stale value")
    got, js, m = queries.step_stats_matrix(run_id, "grad_norm_v", max_steps=10**6)
    if got != want or any(m[i][j] != fake_trainer.grad_norm_at(s, j) for i, s in enumerate(got) for j in js):
        problems.append(f"run {run_id}: per-step statistics not continuous")
    evals = sorted({0, EPOCHS, *range(EVAL_EVERY, EPOCHS + 1, EVAL_EVERY)})
    if queries.sample_steps(run_id) != evals:
        problems.append(f"run {run_id}: eval steps {queries.sample_steps(run_id)} != {evals}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the chaos phase")
    ap.add_argument("--runs", type=int, default=6, help="runs kept in flight")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary data dir")
    ap.add_argument("--broker", default="", help="default: the embedded broker")
    ap.add_argument("--step-seconds", type=float, default=0.1, help="trainer-double seconds per epoch")
    ap.add_argument("--kill-every", type=float, default=90.0, help="mean seconds between kill -9 of a worker (0: never)")
    ap.add_argument("--resend-after", type=float, default=20.0,
                    help="GG_RESEND_QUEUED_AFTER for the workers' sweep: a queued run whose message died with a "
                         "killed worker is sent again after this many seconds (product default 900)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trainer", choices=["fake", "real"], default="fake")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "last_run.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)

    data = tempfile.mkdtemp(prefix="gg-soak-")
    url = args.database_url or "sqlite:///" + os.path.join(data, "store.db")
    schema = None
    if url.startswith("postgresql") and "search_path" not in url:
        from sqlalchemy import create_engine, text

        schema = "gg_soak_" + uuid.uuid4().hex[:8]
        eng = create_engine(url, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text(f"CREATE SCHEMA {schema}"))
        eng.dispose()
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    from tests.worker.procs import Worker, world_env

    env = world_env(url, data, args.broker or "embedded", GG_FAKE_STEP_SECONDS=str(args.step_seconds),
                    GG_STALE_AFTER="4", GG_HEARTBEAT_SECONDS="0.5", GG_RESEND_QUEUED_AFTER=str(args.resend_after))
    if args.trainer == "real":
        env["GG_TRAINER"] = ""
    os.environ.update(env)

    from grpo_guard.config import RunConfig
    from grpo_guard.store import db, queries
    from worker.celery_app import enqueue_run

    db.upgrade(url)
    counts = {"submitted": 0, "stops": 0, "resumes": 0, "kills": 0, "worker_restarts": 0, "succeeded": 0,
              "failed_then_resumed": 0}
    ws = [Worker(env, f"soak{i}", data).wait_ready(180) for i in range(args.workers)]
    config = {"epochs": EPOCHS, "num_steps": NUM_STEPS, "eval_every": EVAL_EVERY, "checkpoint_every": CKPT_EVERY,
              "eval_seeds": [0]}

    def submit() -> int:
        rid = queries.create_run(RunConfig.from_dict(config), tags=["soak"])
        enqueue_run(rid)
        counts["submitted"] += 1
        return rid

    def resume(rid: int) -> None:
        queries.resume_run(rid)
        enqueue_run(rid)
        counts["resumes"] += 1

    active = [submit() for _ in range(args.runs)]
    done: list[int] = []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_report = t0 + 30
    next_kill = t0 + (rng.expovariate(1 / args.kill_every) if args.kill_every > 0 else float("inf"))
    try:
        while time.monotonic() < end:
            time.sleep(rng.uniform(1.0, 4.0))
            rows = {r: queries.get_run(r) for r in active}
            for rid, row in rows.items():
                if row.status == "succeeded":
                    active.remove(rid)
                    done.append(rid)
                    counts["succeeded"] += 1
                    active.append(submit())
                elif row.status == "failed":
                    counts["failed_then_resumed"] += 1
                    print(f"[{time.monotonic() - t0:6.0f}s] run {rid} failed: {row.error}", flush=True)
                    resume(rid)
                elif row.status == "cancelled" and rng.random() < 0.5:
                    resume(rid)
            running = [r for r, row in rows.items() if row.status == "running"]
            if time.monotonic() >= next_report:
                next_report += 30
                print(f"[{time.monotonic() - t0:6.0f}s] {json.dumps(counts)}", flush=True)
            if running and rng.random() < 0.3:
                queries.request_stop(rng.choice(running))
                counts["stops"] += 1
            if time.monotonic() >= next_kill:
                i = rng.randrange(len(ws))
                ws[i].kill9()
                ws[i].stop()
                counts["kills"] += 1
                ws[i] = Worker(env, f"soak{i}r{counts['kills']}", data).wait_ready(180)
                counts["worker_restarts"] += 1
                next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
        chaos_seconds = time.monotonic() - t0
        # Drain: resume whatever is stopped, let everything finish.
        drain_deadline = time.monotonic() + 600
        while active and time.monotonic() < drain_deadline:
            for rid in list(active):
                row = queries.get_run(rid)
                if row.status == "succeeded":
                    active.remove(rid)
                    done.append(rid)
                    counts["succeeded"] += 1
                elif row.status in ("cancelled", "failed"):
                    if row.status == "failed":
                        counts["failed_then_resumed"] += 1
                    resume(rid)
            time.sleep(1.0)
        drain_seconds = time.monotonic() - t0 - chaos_seconds
    finally:
        for w in ws:
            w.stop()
    problems = [p for rid in done for p in check_history(rid)]
    attempts = [queries.get_run(r).attempt for r in done]
    recovered = sum("stopped heartbeating" in ln.message for r in done + active for ln in queries.log_lines(r, tail=10**5))
    result = {
        "minutes_requested": args.minutes, "chaos_seconds": round(chaos_seconds, 1), "drain_seconds": round(drain_seconds, 1),
        "workers": args.workers, "runs_in_flight": args.runs, "trainer": args.trainer,
        "store": db.redact(url).split("?")[0], "broker": args.broker or "embedded", **counts,
        "lost_runs_recovered_by_sweep": recovered, "runs_checked": len(done), "unfinished": active, "max_attempts": max(attempts, default=0),
        "steps_checked": len(done) * EPOCHS, "history_problems": problems,
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    if schema:
        from sqlalchemy import create_engine, text

        db.dispose_engines()
        eng = create_engine(args.database_url, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        eng.dispose()
    return 1 if problems or active else 0


if __name__ == "__main__":
    sys.exit(main())

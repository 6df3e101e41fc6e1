"""Store benchmark: ingestion rate of per-denoising-step statistics, and the latency of the UI's
queries on a store holding RUNS x STEPS x DENOISE statistics rows (default 100 x 5,000 x 10 = 5 M).

    python benchmarks/store/bench_store.py --backend sqlite
    python benchmarks/store/bench_store.py --backend postgresql   # 127.0.0.1:5432, database test

The data goes through the product's own write path: ``StoreRecorder`` (buffered rows, one
transaction per flush of FLUSH_EVERY steps, the bulk path of ``db.bulk_upsert``). Each step
also logs SCALARS scalar metrics; every EVAL_EVERY steps an eval set of PROMPTS x SEEDS sample
rows (rows only: no image files), every 500 steps a checkpoint row, every 10 steps a log line.
Queries are the named functions of ``grpo_guard.store.queries``, called as the app calls them
(a session per call), REPS times each on random runs after 3 warm-up calls.

SQLite lives in --dir (default /tmp/gg-bench); PostgreSQL in schema ``gg_bench`` of database
``test``. Both are dropped at the end unless --keep; --reuse skips the ingestion and times the
queries on a store kept by an earlier --keep run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

PG_BASE = os.environ.get("GG_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PROMPTS = [f"a {c} {s} on a {b} background" for c, s, b in
           [("red", "circle", "blue"), ("green", "square", "white"), ("blue", "triangle", "yellow"),
            ("white", "circle", "black"), ("black", "square", "red"), ("yellow", "triangle", "green"),
            ("purple", "circle", "orange"), ("orange", "square", "purple")]]
SEEDS = (0, 1)
SCALAR_KEYS = ("loss", "policy_loss", "kl_loss", "grad_norm", "lr", "reward/total/mean", "reward/total/std",
               "zero_std_ratio")


def setup_store(backend: str, directory: str, reuse: bool) -> str:
    from sqlalchemy import create_engine, text

    if backend == "sqlite":
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "bench.db")
        if not reuse:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
        url = f"sqlite:///{path}"
    else:
        eng = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            if not reuse:
                c.execute(text("DROP SCHEMA IF EXISTS gg_bench CASCADE"))
            c.execute(text("CREATE SCHEMA IF NOT EXISTS gg_bench"))
        eng.dispose()
        url = f"{PG_BASE}?options=-csearch_path%3Dgg_bench"
    os.environ["GG_DATABASE_URL"] = url
    os.environ["GG_DATA_DIR"] = directory
    os.environ["GG_ARTIFACTS"] = os.path.join(directory, "artifacts")
    from grpo_guard.store import db

    db.upgrade(url)
    return url


def teardown_store(backend: str, directory: str) -> None:
    from sqlalchemy import create_engine, text

    from grpo_guard.store import db

    db.dispose_engines()
    if backend == "postgresql":
        eng = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("DROP SCHEMA IF EXISTS gg_bench CASCADE"))
        eng.dispose()
    shutil.rmtree(directory, ignore_errors=True)


def stat_row(rng: random.Random, step: int, j: int, T: int):
    from grpo_guard.store.models import STEP_STAT_COLUMNS
    from grpo_guard.training.recording import StepStat

    base = rng.random()
    return StepStat(step, j, 1 - j / T, 1 / T, {name: base + k * 1e-3 for k, name in enumerate(STEP_STAT_COLUMNS)})


def ingest(args: argparse.Namespace) -> dict:
    """Write the whole store; time the step-stats path separately on the first runs."""
    from grpo_guard.config import RunConfig
    from grpo_guard.store import db, queries
    from grpo_guard.store.models import Checkpoint, EvalSample, Run
    from grpo_guard.store.recorder import StoreRecorder

    rng = random.Random(0)
    T = args.denoise
    cfg = RunConfig.from_dict({"epochs": args.steps, "num_steps": T})
    t_log = t_flush = 0.0
    timed_rows = 0
    t_all = time.perf_counter()
    for r in range(args.runs):
        rid = queries.create_run(cfg, name=f"bench-{r}", tags=["bench", f"group-{r % 5}"])
        rec = StoreRecorder(rid, background=False, max_buffer=10**9)
        timed = r < args.timed_runs
        for step in range(args.steps):
            rows = [stat_row(rng, step, j, T) for j in range(T)]
            t0 = time.perf_counter()
            rec.log_step_stats(rows)
            t_log += time.perf_counter() - t0 if timed else 0.0
            if not timed:
                rec.log_scalars(step, {k: rng.random() for k in SCALAR_KEYS})
                if step % 10 == 0:
                    rec.log_line(f"epoch {step}: reward {rng.random():.4f}")
            rec.set_progress(step, args.steps)
            if (step + 1) % args.flush_every == 0:
                t0 = time.perf_counter()
                rec.flush()
                t_flush += time.perf_counter() - t0 if timed else 0.0
                timed_rows += args.flush_every * T if timed else 0
        rec.close()
        if timed:  # the timed runs get their scalars afterwards, untimed
            with StoreRecorder(rid, background=False, max_buffer=10**9) as rec2:
                for step in range(args.steps):
                    rec2.log_scalars(step, {k: rng.random() for k in SCALAR_KEYS})
        # eval samples (rows only), checkpoints, final state
        samples = [{"run_id": rid, "step": s, "prompt": p, "seed": seed,
                    "image_location": f"runs/{rid}/samples/{s:06d}/{seed}_x.png",
                    "proxy": 0.5 + s / (4 * args.steps), "gold": 0.9 - s / (8 * args.steps),
                    "scores": json.dumps({"toy_fg_share": 0.5})}
                   for s in range(0, args.steps, args.eval_every) for p in PROMPTS for seed in SEEDS]
        with db.session_scope(write=True) as s:
            db.upsert(s, EvalSample.__table__, samples, ("run_id", "step", "prompt", "seed"))
            db.upsert(s, Checkpoint.__table__, [{"run_id": rid, "step": st, "location": f"runs/{rid}/checkpoints/c{st}.pt",
                                                "meta": "{}", "created_at": db.utcnow()}
                                               for st in range(499, args.steps, 500)], ("run_id", "step"))
            last = samples[-1]["step"]
            s.execute(Run.__table__.update().where(Run.id == rid).values(
                status="succeeded" if r % 10 else "running", last_eval_step=last,
                last_proxy=samples[-1]["proxy"], last_gold=samples[-1]["gold"]))
        if (r + 1) % 10 == 0:
            print(f"  {r + 1}/{args.runs} runs written ({time.perf_counter() - t_all:.0f}s)", flush=True)
    total_s = time.perf_counter() - t_all
    stats_rows = args.runs * args.steps * T
    return {
        "step_stats_rows": stats_rows, "scalar_rows": args.runs * args.steps * len(SCALAR_KEYS),
        "timed_rows": timed_rows,
        "flush_rows_per_s": timed_rows / t_flush if t_flush else None,
        "end_to_end_rows_per_s": timed_rows / (t_log + t_flush) if t_flush else None,
        "populate_seconds": total_s,
    }


def analyze(backend: str) -> None:
    from sqlalchemy import text

    from grpo_guard.store import db

    with db.get_engine().connect() as conn:
        conn.exec_driver_sql("ANALYZE") if backend == "sqlite" else conn.execute(text("ANALYZE"))
        conn.commit()


def time_queries(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from grpo_guard.store import queries

    rng = random.Random(1)
    ids = [r.id for r in queries.list_runs(limit=10_000)]
    mid = args.steps // 2 // args.eval_every * args.eval_every
    cases: dict[str, Callable[[], object]] = {
        "list_runs()": lambda: queries.list_runs(),
        "list_runs(tag, text)": lambda: queries.list_runs(tag="group-3", text="bench"),
        "max_steps(20 runs)": lambda: queries.max_steps(rng.sample(ids, min(20, len(ids)))),
        "get_run": lambda: queries.get_run(rng.choice(ids)),
        "metric_keys": lambda: queries.metric_keys(rng.choice(ids)),
        "metric_series(8 keys, 2000 pts)": lambda: queries.metric_series(rng.choice(ids), max_points=2000),
        "metric_series(1 key, since_step)": lambda: queries.metric_series(rng.choice(ids), ["loss"],
                                                                          since_step=args.steps - 20),
        "step_stats_keys": lambda: queries.step_stats_keys(rng.choice(ids)),
        "step_stats_matrix(400 steps)": lambda: queries.step_stats_matrix(rng.choice(ids), "grad_norm_v"),
        "step_stats_series(1000 pts)": lambda: queries.step_stats_series(rng.choice(ids), "logrhat_mean"),
        "sample_steps": lambda: queries.sample_steps(rng.choice(ids)),
        "sample_prompts": lambda: queries.sample_prompts(rng.choice(ids)),
        "samples_for(prompt, seed)": lambda: queries.samples_for(rng.choice(ids), prompt=rng.choice(PROMPTS), seed=0),
        "samples_for(step)": lambda: queries.samples_for(rng.choice(ids), step=mid),
        "samples_across_runs(10 runs)": lambda: queries.samples_across_runs(rng.sample(ids, min(10, len(ids))), PROMPTS[0], 1, mid),
        "checkpoints": lambda: queries.checkpoints(rng.choice(ids)),
        "log_lines(tail=200)": lambda: queries.log_lines(rng.choice(ids)),
    }
    out: dict[str, dict[str, float]] = {}
    for name, fn in cases.items():
        for _ in range(3):
            fn()
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[name] = {"p50_ms": statistics.median(times), "p95_ms": times[max(0, int(round(0.95 * len(times))) - 1)],
                     "max_ms": times[-1]}
        print(f"  {name:36s} p50 {out[name]['p50_ms']:7.1f} ms   p95 {out[name]['p95_ms']:7.1f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], required=True)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--denoise", type=int, default=10)
    ap.add_argument("--flush-every", type=int, default=100, help="steps per recorder flush (one transaction)")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--timed-runs", type=int, default=4, help="runs whose step-stats ingestion is timed alone")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--dir", default="/tmp/gg-bench")
    ap.add_argument("--reuse", action="store_true", help="time the queries on the store kept by --keep")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args()

    directory = os.path.join(args.dir, args.backend)
    setup_store(args.backend, directory, args.reuse)
    result: dict = {"backend": args.backend, "runs": args.runs, "steps": args.steps, "denoise": args.denoise,
                    "load_average_at_start": os.getloadavg()}
    try:
        if not args.reuse:
            print(f"ingesting {args.runs} runs x {args.steps} steps x {args.denoise} denoising steps ...", flush=True)
            result["ingest"] = ing = ingest(args)
            print(f"  step stats: flush {ing['flush_rows_per_s']:,.0f} rows/s, log+flush "
                  f"{ing['end_to_end_rows_per_s']:,.0f} rows/s (timed on {ing['timed_rows']:,} rows); "
                  f"store populated in {ing['populate_seconds']:.0f}s", flush=True)
            analyze(args.backend)
        print("queries:", flush=True)
        result["queries"] = time_queries(args)
        result["load_average_at_end"] = os.getloadavg()
        worst = max(v["p95_ms"] for v in result["queries"].values())
        print(f"worst p95: {worst:.1f} ms; load average {os.getloadavg()[0]:.1f}")
    finally:
        if args.json_out:
            with open(args.json_out, "w") as fh:
                json.dump(result, fh, indent=2)
        if not args.keep:
            teardown_store(args.backend, directory)


if __name__ == "__main__":
    main()

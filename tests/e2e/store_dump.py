"""What the store holds for one run, as JSON on stdout, for the browser tests (they read the
server's store from another process): ``python -m tests.e2e.store_dump RUN_ID``."""

from __future__ import annotations

import json
import sys


def dump(run_id: int) -> dict:
    from app import run_cache
    from app.pages import run_detail as R
    from grpo_guard.store import queries as q

    run = q.get_run(run_id)
    keys = q.metric_keys(run_id)
    stats = [*R.HEATMAPS, *R.CLIP_STATS, "grad_norm_v"]
    return {"status": run.status, "last_step": run.last_step, "total": run.total,
            "series": q.metric_series(run_id, keys, max_points=run_cache.MAX_POINTS),
            "stats": {s: q.step_stats_matrix(run_id, s, max_steps=run_cache.HEATMAP_STEPS) for s in stats}}


if __name__ == "__main__":
    print(json.dumps(dump(int(sys.argv[1]))))

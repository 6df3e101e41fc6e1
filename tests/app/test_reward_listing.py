"""The New-run form lists every registered reward (declared reward servers included) and the Run
page's Status tab shows each reward server's latency and failures; neither loads torch."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_form_lists_declared_reward_servers_without_torch(tmp_path):
    code = ("import sys, json; from app.run_form import rewards_markdown; md = rewards_markdown(); "
            "print(json.dumps([md, 'torch' in sys.modules]))")
    env = {"GG_REWARD_SERVERS": json.dumps({"servers": {"judge_remote": {"url": "http://10.0.0.7:8700",
                                                                        "reward": "unifiedreward", "kind": "gold"}}}),
           "PATH": "/usr/bin:/bin", "GG_DATA_DIR": str(tmp_path)}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    md, torch_loaded = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                                 text=True, check=True, timeout=120).stdout)
    assert "| `judge_remote` | `gold` |" in md and "server http://10.0.0.7:8700" in md, md
    assert "| `toy_fg_share` | `proxy` | toy |" in md and "sd3,&nbsp;flux" in md
    assert not torch_loaded, "listing rewards in the app must not import torch"


def test_status_rows_show_each_reward_servers_latency_and_failures():
    from app.pages.run_detail import reward_server_rows, status_markdown

    series = {"reward/judge/latency": ([0, 1, 2], [0.5, 0.25, 0.125]), "reward/judge/failures": ([0, 1, 2], [0, 2, 1]),
              "reward/total/mean": ([1, 2], [0.1, 0.2])}
    rows = reward_server_rows(series)
    assert rows == [("reward server judge", "last latency 0.125 s, 3 failed attempt(s) in all")]
    assert reward_server_rows({"reward/total/mean": ([1], [0.1])}) == []

    class Run:
        status, step, total, last_step, attempt, worker_host, worker_gpu = "failed", 2, 3, 2, 1, "w", None
        task_id = heartbeat_at = created_at = enqueued_at = started_at = finished_at = parent_id = pair_id = None
        notes = ""

    assert "| reward server judge | last latency 0.125 s, 3 failed attempt(s) in all |" in status_markdown(Run(), rows)
    assert "| step | 2 / 3 (last stored step 2) |" in status_markdown(Run())
    Run.step, Run.last_step = 0, -1  # queued, or an attempt that has not stored a step yet
    assert "| step | 0 / 3 (no step stored yet) |" in status_markdown(Run())

"""The Run page's Status tab lists every node of a multi-node run's gang, from the store."""

from __future__ import annotations

from grpo_guard.config import RunConfig
from grpo_guard.store import gangs, lifecycle, queries


def test_the_status_tab_lists_every_node_of_the_gang_with_its_gpus(store):
    from app.pages import run_detail as R

    rid = queries.create_run(RunConfig.from_dict({"epochs": 4, "num_nodes": 2, "num_gpus": 2, "prompts_per_epoch": 4}))
    assert "Gang" not in R.render_run(rid, R.poll_cursor(rid), True, None)[-6], "no gang has formed yet"
    lead = gangs.take(rid, 2, host="node-a", gpu="0,1", address="10.1.2.3", port=29_511, timeout_s=60)
    gangs.take(rid, 2, host="node-b", gpu="2,3", address="10.1.2.4", port=1, timeout_s=60)
    claim = lifecycle.claim_run(rid, worker_host="node-a", worker_gpu="0,1")
    gangs.seal(rid, lead.gang, 2, claim.attempt)
    gangs.end(rid, lead.gang, 1, "lost")
    status = R.render_run(rid, R.poll_cursor(rid), True, None)[-6]
    assert "**Gang**: 2 nodes × 2 GPU(s), attempt 1" in status
    assert "| 0 | node-a | 0,1 | ready, training | 10.1.2.3:29511 |" in status
    assert "| 1 | node-b | 2,3 | lost | — |" in status
    one_node = queries.create_run(RunConfig.from_dict({"epochs": 4}))
    assert "Gang" not in R.render_run(one_node, R.poll_cursor(one_node), True, None)[-6]

"""The gang of a multi-node run in the store (SQLite and PostgreSQL): one leader per formation,
node ranks taken atomically by concurrent joiners, release on timeout, the lost-node requeue,
and migration 0009 on a store with rows of every kind."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from grpo_guard.config import RunConfig
from grpo_guard.store import db, gangs, lifecycle, queries


def _run(num_nodes: int = 3) -> int:
    return queries.create_run(RunConfig.from_dict({"epochs": 4, "num_nodes": num_nodes}))


def _take(rid: int, host: str, timeout_s: float = 30.0) -> gangs.Membership | None:
    return gangs.take(rid, 3, host=host, gpu="0", address="10.0.0.1", port=29_400, timeout_s=timeout_s)


def test_the_first_taker_leads_and_concurrent_joiners_get_distinct_ranks(store):
    rid = _run()
    lead = _take(rid, "w0")
    assert (lead.node_rank, lead.num_nodes, lead.address, lead.port) == (0, 3, "10.0.0.1", 29_400)
    got: list[gangs.Membership | None] = []
    barrier = threading.Barrier(4)

    def joiner(i: int) -> None:
        barrier.wait()
        got.append(_take(rid, f"w{i + 1}"))

    threads = [threading.Thread(target=joiner, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    joined = [m for m in got if m is not None]
    assert sorted(m.node_rank for m in joined) == [1, 2], "two of four joiners fit a 3-node gang, once each"
    with pytest.raises(ValueError, match="node 0"):
        gangs.leave(rid, lead.gang, 0)
    assert gangs.leave(rid, lead.gang, 1) is True  # its worker is shutting down: rank 1 is free again
    assert _take(rid, "w9").node_rank == 1
    assert all(m.gang == lead.gang and (m.address, m.port) == ("10.0.0.1", 29_400) for m in joined)
    assert gangs.joined_count(rid, lead.gang) == 3
    claim = lifecycle.claim_run(rid, worker_host="w0")
    assert gangs.seal(rid, lead.gang, 3, claim.attempt)
    assert [m.state for m in gangs.members(rid)] == ["ready"] * 3
    assert _take(rid, "late") is None, "a running run takes no one"


def test_an_incomplete_gang_is_released_and_the_run_stays_queued(store):
    rid = _run()
    lead = _take(rid, "w0")
    member = _take(rid, "w1")
    assert gangs.seal(rid, lead.gang, 3, 1) is False, "two of three nodes cannot be sealed"
    assert gangs.release(rid, lead.gang) is True
    assert {m.state for m in gangs.members(rid)} == {"released"}
    assert gangs.join(rid, lead.gang, host="w2", gpu=None) is None, "a released formation takes no one"
    assert gangs.state_of(rid, member.gang, member.node_rank) == "released"
    assert queries.get_run(rid).status == "queued"
    again = _take(rid, "w2")  # a new formation clears the released rows
    assert again.node_rank == 0 and again.gang != lead.gang
    assert [m.worker_host for m in gangs.members(rid)] == ["w2"]


def test_a_formation_past_its_deadline_is_replaced(store):
    rid = _run()
    dead = _take(rid, "w0", timeout_s=-1)  # its node 0 died while waiting: nobody released it
    assert gangs.open_formation(rid) is None
    fresh = _take(rid, "w1")
    assert fresh.node_rank == 0 and fresh.gang != dead.gang


def test_a_lost_node_requeues_the_run_under_node_0s_lease(store):
    rid = _run(2)
    lead = gangs.take(rid, 2, host="w0", gpu=None, address="h", port=1, timeout_s=30)
    gangs.take(rid, 2, host="w1", gpu=None, address="h", port=2, timeout_s=30)
    claim = lifecycle.claim_run(rid, worker_host="w0")
    assert gangs.seal(rid, lead.gang, 2, claim.attempt)
    assert gangs.lost_nodes(rid, lead.gang, stale_after=60) == []
    assert gangs.lost_nodes(rid, lead.gang, stale_after=-1) == [0, 1], "a ready node that stopped beating is lost"
    gangs.end(rid, lead.gang, 1, "lost")
    assert gangs.lost_nodes(rid, lead.gang, stale_after=60) == [1]
    assert gangs.requeue_lost_gang(rid, "not-the-lease", "node 1 lost") is False
    assert gangs.requeue_lost_gang(rid, claim.lease, "node 1 lost") is True
    row = queries.get_run(rid)
    assert (row.status, row.attempt) == ("queued", 2)
    assert any("node 1 lost; requeued as attempt 2" in ln.message for ln in queries.log_lines(rid))
    with pytest.raises(ValueError, match="done or lost"):
        gangs.end(rid, lead.gang, 0, "ready")
    queries.delete_run(rid)
    assert gangs.members(rid) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0009_adds_the_gang_table_and_keeps_every_row(backend, tmp_path):
    from tests.grpo_guard.store.test_interrupted import CHILD_ROWS, _counts
    from tests.storehelpers import backend_env

    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, "0008")
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            for status in ("queued", "running", "interrupted", "succeeded"):
                conn.execute(text(
                    "INSERT INTO runs (name, config_json, config_fields_set, algorithm, backbone, status, step, total, "
                    "start_step, last_step, attempt, notes, created_at, updated_at) VALUES (:n, '{}', '[]', "
                    "'grpo_guard', 'toy', :s, 1, 4, 0, 1, 1, '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"n": status, "s": status})
            for rid in conn.execute(text("SELECT id FROM runs")).scalars().all():
                for sql in CHILD_ROWS:
                    conn.execute(text(sql), {"rid": rid})
        before = _counts(url)
        db.upgrade(url)
        assert _counts(url) == before
        rid = queries.list_runs(status="queued")[0].id
        assert gangs.take(rid, 2, host="w", gpu=None, address="a", port=1, timeout_s=5).node_rank == 0
        db.downgrade(url, "0008")
        assert _counts(url) == before
        db.upgrade(url)

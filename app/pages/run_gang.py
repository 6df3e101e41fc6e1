"""The Run page's Status tab, part two: every node of a multi-node run's gang (``worker.gang``),
read from the store: node rank, worker, its GPUs, where node 0 listens, the node's state and its
last heartbeat. Nothing for a one-node run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.common import fmt_duration

STATES = {"joined": "joined, waiting for the gang", "ready": "ready, training",
          "stopping": "stopping (its worker shuts down; the gang checkpoints)", "lost": "lost",
          "done": "ended", "released": "released (the gang did not complete)"}


def gang_markdown(members: list[Any], num_gpus: int | None = None, now: datetime | None = None) -> str:
    """A Markdown table with one row per node (``store.gangs.members``); empty without a gang."""
    if not members:
        return ""
    now = now or datetime.now(UTC)
    per_node = f" × {num_gpus} GPU(s)" if num_gpus else ""
    attempt = next((m.attempt for m in members if m.attempt), None)
    head = f"**Gang**: {members[0].num_nodes} nodes{per_node}" + (f", attempt {attempt}" if attempt else "")
    rows = ["| node | worker | GPUs | state | rendezvous | heartbeat |", "|---|---|---|---|---|---|"]
    for m in members:
        where = f"{m.address}:{m.port}" if m.node_rank == 0 and m.address else "—"
        beat = f"{fmt_duration((now - m.heartbeat_at).total_seconds())} ago" if m.heartbeat_at else "—"
        cells = [m.node_rank, m.worker_host, m.worker_gpu or "CPU", STATES.get(m.state, m.state), where, beat]
        rows.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n\n" + head + "\n\n" + "\n".join(rows)


def gang_section(run: Any) -> str:
    """The gang table of ``run`` (a ``queries.get_run`` row), or "" for a run that has none."""
    config = getattr(run, "config", None) or {}
    if int(config.get("num_nodes", 1) or 1) <= 1:
        return ""
    from grpo_guard.store import gangs

    return gang_markdown(gangs.members(run.id), config.get("num_gpus"))

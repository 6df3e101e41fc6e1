"""The gang of workers that runs a multi-node run (``num_nodes`` > 1), as the store sees it.

A run with ``num_nodes: N`` is taken by N workers together. Each taker inserts one row of
``gang_members`` for a node rank of the run's current *formation* (a token, ``gang``):

    take --no formation--> lead:  node 0, publishes address:port, deadline = now + timeout
         '--formation---> join:  the lowest free node rank 1..N-1 of it (the primary key
                                  (run_id, node_rank) makes two takers never get the same rank)
    joined --all N joined: node 0 seals--> ready --launch exits--> done | lost
       |                                     '--its worker shuts down--> stopping --> done | lost
       '--deadline passed (node 0 releases, or a member gives up)--> released

``stopping`` asks node 0 to stop the whole gang at its next checkpoint (a node's own shutdown
cannot: only rank 0, on node 0, decides when the ranks stop together).

Every step is one INSERT or conditional UPDATE, so it holds on SQLite and PostgreSQL alike. The
run row itself stays ``queued`` while the gang forms; only node 0 claims it (``lifecycle.
claim_run``) once the gang is complete, so a gang that never completes leaves nothing behind but
``released`` rows. The rows of the latest gang stay for the Run page's Status tab; a new
formation clears them once the run is queued again. Imports no torch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from grpo_guard.store.db import StoreError, as_utc, session_scope, utcnow
from grpo_guard.store.models import GangMember, LogLine, Run

TRAINING = ("ready", "stopping")  # the states of a node whose ranks run


@dataclass(frozen=True)
class Membership:
    """This worker's place in a gang: node ``node_rank`` of ``num_nodes`` in formation ``gang``,
    whose node 0 listens at ``address``:``port``; the gang must be complete by ``deadline``."""

    run_id: int
    gang: str
    node_rank: int
    num_nodes: int
    address: str | None
    port: int | None
    deadline: datetime
    num_gpus: int = 1
    joined_at: datetime | None = None


@dataclass(frozen=True)
class Member:
    """One row of a run's latest gang, as the Run page shows it."""

    node_rank: int
    num_nodes: int
    state: str
    worker_host: str
    worker_gpu: str | None
    address: str | None
    port: int | None
    attempt: int | None
    joined_at: datetime | None
    heartbeat_at: datetime | None


def _conflict(e: StoreError) -> bool:
    """The write lost a race on the primary key (another worker took that node rank)."""
    return isinstance(e.__cause__, IntegrityError)


def _queued(run_id: int):
    return exists().where(Run.id == int(run_id), Run.status == "queued")


def lead(run_id: int, num_nodes: int, *, host: str, gpu: str | None, address: str, port: int,
         timeout_s: float, num_gpus: int = 1) -> Membership | None:
    """Start a new formation as node 0 of a queued run. None when the run is not queued or
    another worker leads a formation that is still open."""
    now = utcnow()
    gang, deadline = str(uuid.uuid4()), now + timedelta(seconds=float(timeout_s))
    try:
        with session_scope(write=True) as s:
            if not s.scalar(select(_queued(run_id))):
                return None
            # rows of an earlier gang of this (queued again) run, and of a formation whose
            # deadline passed without anyone releasing it (its node 0 died while waiting)
            s.execute(delete(GangMember).where(GangMember.run_id == int(run_id)).where(
                (GangMember.state != "joined") | (GangMember.deadline < now)))
            s.add(GangMember(run_id=int(run_id), node_rank=0, gang=gang, num_nodes=int(num_nodes),
                             num_gpus=int(num_gpus), state="joined",
                             worker_host=host[:255], worker_gpu=gpu, address=address, port=int(port),
                             deadline=deadline, joined_at=now, heartbeat_at=now))
    except StoreError as e:
        if _conflict(e):
            return None  # another worker leads
        raise
    return Membership(int(run_id), gang, 0, int(num_nodes), address, int(port), deadline, int(num_gpus), now)


def open_formation(run_id: int) -> tuple[str, int, datetime] | None:
    """(gang, num_nodes, deadline) of the run's formation that still takes members, or None."""
    with session_scope() as s:
        row = s.execute(select(GangMember.gang, GangMember.num_nodes, GangMember.deadline).where(
            GangMember.run_id == int(run_id), GangMember.node_rank == 0, GangMember.state == "joined",
            GangMember.deadline >= utcnow())).first()
    return (row[0], row[1], as_utc(row[2])) if row else None


def join(run_id: int, gang: str, *, host: str, gpu: str | None) -> Membership | None:
    """Take the lowest free node rank of formation ``gang``. None when it is full, closed or gone."""
    with session_scope() as s:
        head = s.execute(select(GangMember.num_nodes, GangMember.address, GangMember.port, GangMember.deadline,
                                GangMember.num_gpus).where(GangMember.run_id == int(run_id), GangMember.node_rank == 0,
                                                           GangMember.gang == gang)).first()
    if head is None:
        return None
    num_nodes, address, port, deadline, num_gpus = head[0], head[1], head[2], as_utc(head[3]), head[4]
    for rank in range(1, num_nodes):
        now = utcnow()
        leader_open = exists().where(GangMember.run_id == int(run_id), GangMember.node_rank == 0,
                                     GangMember.gang == gang, GangMember.state == "joined",
                                     GangMember.deadline >= now)
        row = select(literal(int(run_id)), literal(rank), literal(gang), literal(num_nodes), literal(num_gpus),
                     literal("joined"), literal(host[:255]), literal(gpu), literal(deadline), literal(now),
                     literal(now)).where(leader_open)
        try:
            with session_scope(write=True) as s:
                # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... SELECT here
                taken = s.execute(insert(GangMember).from_select(
                    ["run_id", "node_rank", "gang", "num_nodes", "num_gpus", "state", "worker_host", "worker_gpu",
                     "deadline", "joined_at", "heartbeat_at"], row).returning(GangMember.node_rank)).first()
                if taken is None:
                    return None  # node 0 released the formation, or its deadline passed
        except StoreError as e:
            if _conflict(e):
                continue  # another worker took this rank first
            raise
        return Membership(int(run_id), gang, rank, num_nodes, address, port, deadline, num_gpus, now)
    return None


def take(run_id: int, num_nodes: int, *, host: str, gpu: str | None, address: str, port: int,
         timeout_s: float, num_gpus: int = 1) -> Membership | None:
    """Join the run's open formation, or lead a new one; None when the run is not queued or its
    open formation is full."""
    for _ in range(3):  # a formation may open or close between the look and the insert
        current = open_formation(run_id)
        if current is not None:
            m = join(run_id, current[0], host=host, gpu=gpu)
            if m is not None or open_formation(run_id) is not None:
                return m
            continue
        m = lead(run_id, num_nodes, host=host, gpu=gpu, address=address, port=port, timeout_s=timeout_s,
                 num_gpus=num_gpus)
        if m is not None:
            return m
    return None


def older_formation(me: Membership) -> tuple[int, str] | None:
    """(run id, gang) of another run's open formation of the same shape (nodes x GPUs, so the
    same queue) that began before ``me`` (ties: the lower run id), or None. A leader that finds
    one gives its own run back and joins that one: with as many free workers as one gang needs
    and two gangs forming, each holding some of them, neither could ever complete."""
    with session_scope() as s:
        row = s.execute(select(GangMember.run_id, GangMember.gang).where(
            GangMember.node_rank == 0, GangMember.state == "joined", GangMember.deadline >= utcnow(),
            GangMember.run_id != me.run_id, GangMember.num_nodes == me.num_nodes,
            GangMember.num_gpus == me.num_gpus,
            (GangMember.joined_at < me.joined_at) | ((GangMember.joined_at == me.joined_at)
                                                     & (GangMember.run_id < me.run_id)))
            .order_by(GangMember.joined_at, GangMember.run_id).limit(1)).first()
    return (row[0], row[1]) if row else None


def joined_count(run_id: int, gang: str) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(GangMember).where(
            GangMember.run_id == int(run_id), GangMember.gang == gang, GangMember.state == "joined")) or 0)


def seal(run_id: int, gang: str, num_nodes: int, attempt: int) -> bool:
    """Node 0, with every node joined and the run claimed: the whole formation becomes ``ready``
    (the other nodes launch on seeing it), all or nothing. False if it was not complete any more."""
    try:
        with session_scope(write=True) as s:
            res = s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                                     GangMember.state == "joined")
                            .values(state="ready", attempt=int(attempt), heartbeat_at=utcnow()))
            if res.rowcount != int(num_nodes):
                raise _Incomplete()
    except _Incomplete:
        return False
    return True


class _Incomplete(Exception):
    """Rolls the seal back (a member gave up between the count and the seal)."""


def release(run_id: int, gang: str) -> bool:
    """Give up a formation that did not complete: every member still ``joined`` becomes
    ``released``. True if node 0's row was released by this call."""
    with session_scope(write=True) as s:
        head = s.scalar(select(GangMember.state).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                                       GangMember.node_rank == 0))
        s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                           GangMember.state == "joined").values(state="released",
                                                                                heartbeat_at=utcnow()))
    return head == "joined"


def leave(run_id: int, gang: str, node_rank: int) -> bool:
    """A member (not node 0) leaves a formation that has not started: its row goes, so its node
    rank is free for another worker. False if the gang was sealed meanwhile (it must launch)."""
    if int(node_rank) == 0:
        raise ValueError("node 0 releases its formation; it does not leave it")
    with session_scope(write=True) as s:
        res = s.execute(delete(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                                 GangMember.node_rank == int(node_rank),
                                                 GangMember.state.in_(("joined", "released"))))
        return bool(res.rowcount)


def state_of(run_id: int, gang: str, node_rank: int) -> str | None:
    with session_scope() as s:
        return s.scalar(select(GangMember.state).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                                       GangMember.node_rank == int(node_rank)))


def states_of(run_id: int, gang: str, node_ranks: tuple[int, ...]) -> tuple[str | None, ...]:
    """The states of several nodes of one formation read in one statement: two separate reads
    can straddle node 0's seal (a node read ``joined`` before it and node 0 ``ready`` after it,
    and took the formation for released)."""
    with session_scope() as s:
        rows = dict(s.execute(select(GangMember.node_rank, GangMember.state).where(
            GangMember.run_id == int(run_id), GangMember.gang == gang,
            GangMember.node_rank.in_([int(r) for r in node_ranks]))).all())
    return tuple(rows.get(int(r)) for r in node_ranks)


def beat(run_id: int, gang: str, node_rank: int) -> None:
    """This node is alive (its worker waits on its launch)."""
    with session_scope(write=True) as s:
        s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                           GangMember.node_rank == int(node_rank)).values(heartbeat_at=utcnow()))


def ask_to_stop(run_id: int, gang: str, node_rank: int) -> bool:
    """This node's worker is shutting down: node 0 is to stop the gang at its next checkpoint
    (:func:`stopping_nodes`). False if the node was not training any more."""
    with session_scope(write=True) as s:
        res = s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                                 GangMember.node_rank == int(node_rank), GangMember.state == "ready")
                        .values(state="stopping", heartbeat_at=utcnow()))
        return bool(res.rowcount)


def stopping_nodes(run_id: int, gang: str) -> list[int]:
    """Node ranks of the gang whose workers are shutting down (:func:`ask_to_stop`)."""
    with session_scope() as s:
        return sorted(s.scalars(select(GangMember.node_rank).where(
            GangMember.run_id == int(run_id), GangMember.gang == gang, GangMember.state == "stopping")).all())


def end(run_id: int, gang: str, node_rank: int, state: str) -> None:
    """A training (ready or stopping) node's launch ended: ``done`` (exit 0) or ``lost``."""
    if state not in ("done", "lost"):
        raise ValueError(f"a gang member ends done or lost, not {state!r}")
    with session_scope(write=True) as s:
        s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                           GangMember.node_rank == int(node_rank),
                                           GangMember.state.in_(TRAINING)).values(state=state, heartbeat_at=utcnow()))


def lost_nodes(run_id: int, gang: str, stale_after: float) -> list[int]:
    """Node ranks of the gang that are lost: marked so, or training with a heartbeat older than
    ``stale_after`` seconds (the worker died with its launch)."""
    cut = utcnow() - timedelta(seconds=float(stale_after))
    with session_scope() as s:
        rows = s.execute(select(GangMember.node_rank, GangMember.state, GangMember.heartbeat_at).where(
            GangMember.run_id == int(run_id), GangMember.gang == gang)).all()
    return sorted(r[0] for r in rows if r[1] == "lost" or (r[1] in TRAINING and as_utc(r[2]) < cut))


def mark_lost(run_id: int, gang: str, node_ranks: list[int]) -> None:
    if not node_ranks:
        return
    with session_scope(write=True) as s:
        s.execute(update(GangMember).where(GangMember.run_id == int(run_id), GangMember.gang == gang,
                                           GangMember.node_rank.in_([int(r) for r in node_ranks]),
                                           GangMember.state.in_((*TRAINING, "joined"))).values(state="lost"))


def run_state(run_id: int) -> tuple[str | None, int | None]:
    """(status, attempt) of the run; (None, None) once it is deleted."""
    with session_scope() as s:
        row = s.execute(select(Run.status, Run.attempt).where(Run.id == int(run_id))).first()
    return (row[0], row[1]) if row else (None, None)


def members(run_id: int) -> list[Member]:
    """The run's latest gang, by node rank (empty for a run that never formed one)."""
    with session_scope() as s:
        rows = s.scalars(select(GangMember).where(GangMember.run_id == int(run_id))
                         .order_by(GangMember.node_rank)).all()
        return [Member(r.node_rank, r.num_nodes, r.state, r.worker_host, r.worker_gpu, r.address, r.port, r.attempt,
                       as_utc(r.joined_at), as_utc(r.heartbeat_at)) for r in rows]


def requeue_lost_gang(run_id: int, lease: str, reason: str) -> bool:
    """Node 0, when a node of its gang was lost: the run goes back to ``queued`` as attempt+1 and
    resumes from its checkpoint once a full gang forms again. False if the lease was lost."""
    now = utcnow()
    with session_scope(write=True) as s:
        res = s.execute(update(Run).where(Run.id == int(run_id), Run.lease == lease).values(
            status="queued", attempt=Run.attempt + 1, lease=None, enqueued_at=now, finished_at=None,
            stop_requested=False, sample_now=False, save_now=False, updated_at=now))
        if res.rowcount:
            attempt = s.scalar(select(Run.attempt).where(Run.id == int(run_id)))
            s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=now, level="warning",
                          message=f"{reason}; requeued as attempt {attempt}: it resumes from its checkpoint "
                                  "once a full gang forms again"))
        return bool(res.rowcount)


def log(run_id: int, message: str, level: str = "info") -> None:
    """A line in the run's log (the gang's progress while the run is still queued)."""
    with session_scope(write=True) as s:
        attempt = s.scalar(select(Run.attempt).where(Run.id == int(run_id)))
        if attempt is not None:
            s.add(LogLine(run_id=int(run_id), attempt=attempt, created_at=utcnow(), level=level, message=message))

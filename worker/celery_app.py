"""The Celery app, built from the environment, and ``enqueue_run`` (``worker.submit`` and the recovery sweep send with it).

Imports no torch and no task module: the app sends ``worker.tasks.train_run`` *by name*; only a
worker process imports ``worker.tasks`` (through ``include``).

Environment:
  GG_BROKER_URL          broker, e.g. ``redis://redis:6379/0``. Unset: an embedded broker that
                         needs no server (kombu's filesystem transport under GG_DATA_DIR/broker;
                         one host only).
  GG_QUEUE               queue the runs go to and the GPU workers consume (default ``runs``).
                         A run with num_gpus N > 1 goes to ``<queue>-<N>gpu`` instead, which
                         only workers owning at least N GPUs consume (``grpo-guard worker
                         --gpus 0+1``), so a one-GPU worker never picks it up. A run on
                         num_nodes M > 1 machines goes to ``<queue>-<M>x<N>gpu``: M workers
                         owning N GPUs each take it together as a gang (``worker.gang``).
  GG_GANG_NODES          the gang sizes a worker takes part in, read when it starts: ``2-8``
                         (default), a list such as ``2,4,16``, or ``0`` for none. A worker owning
                         G GPUs consumes ``<queue>-<M>x<g>gpu`` for every such M and g <= G.
  GG_VISIBILITY_TIMEOUT  Redis: seconds before an unacknowledged message is redelivered
                         (default 7 days: longer than any run, STACK.md C4)

Delivery settings (STACK.md C4/C5): ``acks_late`` with ``reject_on_worker_lost`` and prefetch 1,
so a worker holds exactly the message it runs and never reserves a second one behind it; one
process per GPU, a fresh child per run (``max_tasks_per_child=1``). The run's truth is the
database: a task re-reads its row and only starts a ``queued`` run, so a redelivered or
duplicated message is harmless, and runs whose worker died are recovered from the database by
``worker.recovery`` (stale heartbeat), not by the broker.
"""

from __future__ import annotations

import contextlib
import os
import threading

from celery import Celery
from celery.signals import worker_init

from grpo_guard.store.db import data_dir

TASK_NAME = "worker.tasks.train_run"
EVAL_TASK_NAME = "worker.tasks.evaluate_model"
DEFAULT_QUEUE = "runs"
DEFAULT_VISIBILITY_TIMEOUT = 7 * 24 * 3600


def broker_url() -> str:
    """GG_BROKER_URL, or ``filesystem://`` (the embedded broker)."""
    return os.environ.get("GG_BROKER_URL", "").strip() or "filesystem://"


def queue_name() -> str:
    return os.environ.get("GG_QUEUE", "").strip() or DEFAULT_QUEUE


def run_queue(num_gpus: int = 1, base: str | None = None, num_nodes: int = 1) -> str:
    """The queue of a run on ``num_gpus`` GPUs per node on ``num_nodes`` nodes (see GG_QUEUE above)."""
    base = base or queue_name()
    if num_nodes > 1:
        return f"{base}-{int(num_nodes)}x{int(num_gpus)}gpu"
    return base if num_gpus <= 1 else f"{base}-{int(num_gpus)}gpu"


DEFAULT_GANG_NODES = "2-8"


def gang_sizes(spec: str | None = None) -> list[int]:
    """The gang sizes (num_nodes) a worker takes part in: GG_GANG_NODES (see above). A bad value
    raises ValueError with one sentence saying what is expected."""
    text = (spec if spec is not None else os.environ.get("GG_GANG_NODES", "")).strip() or DEFAULT_GANG_NODES
    if text == "0":
        return []
    sizes: set[int] = set()
    try:
        for part in text.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            sizes.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"GG_GANG_NODES must be a range such as 2-8, a list such as 2,4 or 0, got {text!r}") from None
    if not sizes or min(sizes) < 2 or max(sizes) > 64:
        raise ValueError(f"GG_GANG_NODES must name gang sizes between 2 and 64 (or be 0), got {text!r}")
    return sorted(sizes)


def worker_queues(owned_gpus: int = 1, base: str | None = None) -> str:
    """The comma-separated queues a worker owning ``owned_gpus`` GPUs consumes: single-GPU runs,
    every multi-GPU size it can host, and its part of every gang size of GG_GANG_NODES."""
    owned = max(1, owned_gpus)
    queues = [run_queue(n, base) for n in range(1, owned + 1)]
    queues += [run_queue(g, base, num_nodes=m) for m in gang_sizes() for g in range(1, owned + 1)]
    return ",".join(queues)


def embedded_broker_dir() -> str:
    return os.path.join(data_dir(), "broker")


def _filesystem_options() -> dict[str, object]:
    root = embedded_broker_dir()
    folders = {"data_folder_in": os.path.join(root, "queue"), "data_folder_out": os.path.join(root, "queue"),
               "processed_folder": os.path.join(root, "processed"), "control_folder": os.path.join(root, "control")}
    for path in folders.values():
        with contextlib.suppress(OSError):  # kombu reports it when the broker is actually used
            os.makedirs(path, exist_ok=True)
    return {**folders, "store_processed": False, "polling_interval": 0.5}


@worker_init.connect
def turn_the_embedded_loop_faster(**_: object) -> None:
    """In a worker on the embedded broker: Celery's loop for brokers without events (``synloop``)
    waits up to 2 s per turn for a message and, once a warm shutdown is asked for, turns one more
    whole time before it stops (a ``finally``), so every Ctrl-C waited 2-4 s here after the run had
    checkpointed. Each wait is capped at the broker's polling interval (0.5 s) instead: the loop
    turns more often and notices the shutdown within about 1 s; delivery is unchanged."""
    from kombu.transport import filesystem

    original = filesystem.Transport.drain_events
    if getattr(original, "gg_capped", False):
        return

    def drain_events(self: object, connection: object, timeout: float | None = None) -> object:
        cap = getattr(self, "polling_interval", None) or 0.5
        return original(self, connection, timeout=timeout if timeout is None else min(timeout, cap))

    drain_events.gg_capped = True  # type: ignore[attr-defined]
    filesystem.Transport.drain_events = drain_events  # type: ignore[method-assign]


def make_app(url: str | None = None) -> Celery:
    """A Celery app for broker ``url`` (default: ``broker_url()``)."""
    url = url or broker_url()
    app = Celery("grpo_guard", broker=url, include=["worker.tasks"])
    try:
        vt = int(os.environ.get("GG_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT))
    except ValueError:
        vt = DEFAULT_VISIBILITY_TIMEOUT
    is_redis = url.startswith(("redis", "rediss"))
    transport_options: dict[str, object] = {"visibility_timeout": vt} if is_redis else {}
    if url.startswith("filesystem"):
        transport_options = _filesystem_options()
    app.conf.update(
        task_default_queue=queue_name(),
        task_serializer="json", accept_content=["json"],
        task_ignore_result=True, result_backend=None,  # progress and outcome live in our tables (C3)
        task_acks_late=True, task_reject_on_worker_lost=True,  # C4
        broker_transport_options=transport_options,
        worker_prefetch_multiplier=1, worker_concurrency=1, worker_max_tasks_per_child=1,  # C5
        worker_disable_prefetch=is_redis,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, not fatal
        worker_soft_shutdown_timeout=60.0,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


app = make_app()
_apps: dict[tuple[str, str, str], Celery] = {}
_lock = threading.Lock()


def get_app() -> Celery:
    """The app for the current environment (rebuilt if GG_BROKER_URL / GG_DATA_DIR / GG_QUEUE
    changed since import, e.g. in tests)."""
    key = (broker_url(), data_dir(), queue_name())
    if key == _APP_KEY:
        return app
    with _lock:
        if key not in _apps:
            _apps[key] = make_app(key[0])
        return _apps[key]


_APP_KEY = (broker_url(), data_dir(), queue_name())


def enqueue_run(run_id: int, *, num_gpus: int | None = None, num_nodes: int | None = None) -> str:
    """Send ``worker.tasks.train_run(run_id)`` by name, after the run's row is committed, to the
    queue of a run on ``num_gpus`` GPUs on each of ``num_nodes`` nodes (the submitter knows them
    from the config it just stored; ``num_nodes`` is 1 unless given; a re-send that has only the
    id leaves both None and the stored config says). Records the task
    id on the row; returns it."""
    from grpo_guard.store.lifecycle import mark_enqueued

    if num_gpus is None:
        gpus, nodes = _shape(int(run_id))
    else:
        gpus, nodes = num_gpus, num_nodes or 1
    result = get_app().send_task(TASK_NAME, args=[int(run_id)], queue=run_queue(gpus, num_nodes=nodes))
    mark_enqueued(int(run_id), result.id)
    return result.id


def enqueue_gang_join(run_id: int, gang: str, *, num_gpus: int, num_nodes: int) -> str:
    """Send ``train_run(run_id, gang=GANG)`` to the run's gang queue: one more worker joins the
    formation ``gang`` (``worker.gang``); a message whose formation is gone is dropped."""
    return get_app().send_task(TASK_NAME, args=[int(run_id)], kwargs={"gang": gang},
                               queue=run_queue(num_gpus, num_nodes=num_nodes)).id


def enqueue_evaluation(evaluation_id: int) -> str:
    """Send ``worker.tasks.evaluate_model(evaluation_id)`` by name to the one-GPU runs queue (the
    evaluation's row is committed, ``queued``); returns the task id."""
    return get_app().send_task(EVAL_TASK_NAME, args=[int(evaluation_id)], queue=run_queue(1)).id


def _shape(run_id: int) -> tuple[int, int]:
    """The stored config's (num_gpus, num_nodes), for senders that have only the run id (resume,
    clone, the recovery sweep); 1 for what cannot be read (the task itself reports why)."""
    import json

    from grpo_guard.store.lifecycle import stored_config

    try:
        stored = stored_config(run_id)
        data = json.loads(stored[0]) if stored else {}
        return tuple(n if isinstance(n, int) and n >= 1 else 1  # type: ignore[return-value]
                     for n in (data.get("num_gpus", 1), data.get("num_nodes", 1)))
    except (ValueError, TypeError, AttributeError):
        return 1, 1


def revoke_run(task_id: str, *, terminate: bool = False) -> None:
    """Drop a queued message (``terminate=False``), or as an admin's last resort kill the
    process running it (STACK.md C1; use ``queries.request_stop`` for a normal stop)."""
    get_app().control.revoke(task_id, terminate=terminate, signal="SIGTERM")

"""The Celery wiring in one process (STACK.md C9): the app from the environment, a task sent by
name through a real broker transport (``memory://``), consumed by an in-process worker thread."""

from __future__ import annotations

import time

import pytest
from celery.contrib.testing.worker import start_worker

from grpo_guard.config import RunConfig
from grpo_guard.store import queries
from worker import celery_app


@pytest.fixture(scope="module")
def memory_app(store):
    """One in-process worker (solo pool, a thread) per module and backend."""
    import worker.tasks
    from tests.worker import fake_trainer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(worker.tasks, "TRAIN_FN", fake_trainer.train)
        mp.setenv("GG_FAKE_STEP_SECONDS", "0.02")
        mp.setenv("GG_BROKER_URL", "memory://")
        mp.setenv("GG_QUEUE", "inproc")
        mp.setenv("GG_SWEEP_INTERVAL", "0")
        app = celery_app.get_app()
        assert app.conf.broker_url == "memory://" and app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            yield app


def _wait_terminal(rid: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = queries.get_run(rid)
        if row.is_terminal:
            return row.status
        time.sleep(0.05)
    raise AssertionError(f"run {rid} still {queries.get_run(rid).status}")


def test_a_task_sent_by_name_runs_the_run(memory_app):
    rid = queries.create_run(RunConfig.from_dict({"epochs": 3, "num_steps": 2, "eval_seeds": [0]}))
    task_id = celery_app.enqueue_run(rid)
    assert queries.get_run(rid).task_id == task_id and queries.get_run(rid).enqueued_at is not None
    assert _wait_terminal(rid) == "succeeded"
    assert queries.max_steps([rid])[rid] == 3


def test_duplicate_messages_run_the_run_once(memory_app):
    rid = queries.create_run(RunConfig.from_dict({"epochs": 2, "num_steps": 2, "eval_seeds": [0]}))
    celery_app.enqueue_run(rid)
    celery_app.enqueue_run(rid)
    assert _wait_terminal(rid) == "succeeded"
    time.sleep(0.5)  # let the second delivery be consumed
    starts = [ln for ln in queries.log_lines(rid) if "fake trainer started" in ln.message]
    assert len(starts) == 1


def test_the_app_module_imports_no_torch_and_no_tasks():
    import subprocess
    import sys

    code = ("import sys, worker.celery_app, grpo_guard.store.queries; "
            "bad = [m for m in ('torch', 'worker.tasks', 'diffusers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_worker_on_the_embedded_broker_waits_at_most_its_polling_interval_per_turn(monkeypatch):
    """Celery's loop asks the broker for up to 2 s a turn and turns once more after a shutdown is
    asked for; in a worker (``worker_init``) the embedded broker caps each wait at its polling
    interval, so Ctrl-C is not held up by it. Blocking waits (None) and shorter ones are kept."""
    from kombu.transport import filesystem

    asked: list[float | None] = []
    monkeypatch.setattr(filesystem.Transport, "drain_events",
                        lambda self, connection, timeout=None: asked.append(timeout))
    celery_app.turn_the_embedded_loop_faster()
    celery_app.turn_the_embedded_loop_faster()  # a second worker_init does not wrap it twice
    transport = filesystem.Transport.__new__(filesystem.Transport)
    transport.polling_interval = 0.5
    for timeout in (2.0, None, 0.1):
        filesystem.Transport.drain_events(transport, None, timeout=timeout)
    assert asked == [0.5, None, 0.1]


def test_a_queued_evaluation_is_sent_by_name_and_the_worker_fills_its_row(memory_app, tmp_path):
    """``grpo-guard eval --submit`` and the Run page's Evaluate… store a queued row and send
    ``worker.tasks.evaluate_model`` by name; the worker, not the sender, evaluates."""
    from grpo_guard.evaluation.request import build_request
    from grpo_guard.store import evaluations as ev
    from worker.submit import submit_evaluation

    (tmp_path / "p.txt").write_text("a red circle on a blue background\n")
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(RunConfig.from_dict({"eval_num_steps": 2}).to_yaml())
    request = build_request("toy", config_path=str(cfg), prompts=f"file:{tmp_path / 'p.txt'}", images_per_prompt=1)
    done = submit_evaluation(request)
    assert done.warnings == ()
    (eid,) = done.ids
    deadline = time.monotonic() + 120
    while ev.get_evaluation(eid).status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    row = ev.get_evaluation(eid)
    assert (row.status, row.error) == ("succeeded", None)
    assert set(row.metrics) == {"toy_alignment", "toy_fidelity", "toy_palette_purity"}

"""Worker fixtures: a fresh store per module on SQLite and PostgreSQL, the in-memory trainer
double, and a check that a finished run's history is continuous."""

from __future__ import annotations

import pytest

from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker import fake_trainer


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    with backend_env(request.param, tmp_path_factory.mktemp(f"worker-{request.param}")) as url:
        yield url


@pytest.fixture
def fake(monkeypatch):
    """Route train_run to the trainer double (fast steps)."""
    import worker.tasks

    monkeypatch.setattr(worker.tasks, "TRAIN_FN", fake_trainer.train)
    monkeypatch.setenv("GG_FAKE_STEP_SECONDS", "0.02")
    return fake_trainer


def assert_continuous(run_id: int, epochs: int, num_steps: int, eval_every: int) -> None:
    """Every step 1..epochs present exactly once with the value an uninterrupted run logs."""
    steps, values = queries.metric_series(run_id, ["loss"], max_points=10**6)["loss"]
    assert steps == list(range(1, epochs + 1)), f"missing or extra steps: {sorted(set(range(1, epochs + 1)) ^ set(steps))}"
    assert values == [fake_trainer.loss_at(k) for k in steps], "a replayed step kept a stale value"
    got, js, m = queries.step_stats_matrix(run_id, "grad_norm_v", max_steps=10**6)
    assert got == steps and js == list(range(num_steps))
    assert all(m[i][j] == fake_trainer.grad_norm_at(s, j) for i, s in enumerate(got) for j in js)
    evals = sorted({0, epochs, *range(eval_every, epochs + 1, eval_every)})
    assert queries.sample_steps(run_id) == evals
    assert queries.max_steps([run_id])[run_id] == epochs

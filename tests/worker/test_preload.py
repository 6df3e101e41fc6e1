"""Embedded workers import the trainer when their child starts, not when a run arrives."""

from __future__ import annotations

import sys

from worker import tasks


def test_a_preloading_child_has_the_trainer_imported_before_its_first_run(monkeypatch):
    monkeypatch.setenv("GG_WORKER_PRELOAD", "1")
    monkeypatch.delenv("GG_TRAINER", raising=False)
    monkeypatch.setattr(tasks, "_preload", None)
    tasks.preload_trainer()
    assert tasks._preload is not None
    tasks._preload.join(timeout=300)
    assert all(m in sys.modules for m in tasks.PRELOAD_MODULES)
    assert tasks.resolve_train_fn() is sys.modules["grpo_guard.training.trainer"].train


def test_no_preload_without_the_switch_or_with_a_test_trainer(monkeypatch):
    monkeypatch.setattr(tasks, "_preload", None)
    monkeypatch.delenv("GG_WORKER_PRELOAD", raising=False)
    tasks.preload_trainer()
    assert tasks._preload is None
    monkeypatch.setenv("GG_WORKER_PRELOAD", "1")
    monkeypatch.setenv("GG_TRAINER", "tests.worker.fake_trainer:train")
    tasks.preload_trainer()
    assert tasks._preload is None

"""Browser end-to-end of the Run page's benchmark evaluation: on a store holding a toy run with a
checkpoint, click Evaluate… (toy benchmark, last step): the request thread only queues the
evaluation; this test then plays the worker (``worker.tasks.evaluate_model``'s body on the same
SQLite store), and the Evaluations tab's table shows exactly the stored metrics of the checkpoint
and of the base model. The run trains and evaluates on the same prompts, so the page warns."""

from __future__ import annotations

import os

import pytest

from tests.e2e.test_ui_e2e import (
    ARTIFACTS,
    _wait_for,
    chromium_page,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def server(eval_store_server):
    return eval_store_server


@pytest.fixture
def store_env(server, monkeypatch):
    from grpo_guard.store import db

    monkeypatch.setenv("GG_DATA_DIR", server["data"])
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS"):
        monkeypatch.delenv(k, raising=False)
    yield
    db.dispose_engines()


def _choose(page, elem_id: str, value: str) -> None:
    """Type ``value`` into a Gradio dropdown and make sure it took: CI twice saw Enter pressed
    before the filtered list had updated, which left the default (geneval) selected, so the
    toy run was evaluated on GenEval (failed, or refused before anything loaded)."""
    box = page.locator(f"#{elem_id} input").first
    for _ in range(10):
        box.click()
        box.fill(value)
        page.wait_for_timeout(300)  # the dropdown filters its list on input
        box.press("Enter")
        box.press("Tab")  # blur: a value the dropdown did not take reverts here
        if box.input_value() == value:
            return
    raise AssertionError(f"the dropdown #{elem_id} did not take {value!r} (shows {box.input_value()!r})")


def test_click_evaluate_then_the_table_equals_the_store(server, store_env):
    from grpo_guard.evaluation.runner import execute_queued
    from grpo_guard.store import evaluations as ev

    rid = server["run"]
    with chromium_page() as page:
        page.goto(f"{server['url']}/run?run={rid}", wait_until="domcontentloaded")
        page.locator("#run-prompt-overlap").wait_for()  # same training and eval prompts
        assert "eval prompts are also training prompts" in page.locator("#run-prompt-overlap").inner_text()
        page.locator("#tab-checkpoints-button, button[role=tab]:has-text('Checkpoints')").first.click()
        page.locator("#run-evaluate").get_by_text("Evaluate…").first.click()
        _choose(page, "run-eval-benchmark", "toy")
        _choose(page, "run-eval-step", "last")
        page.locator("#run-eval-ipp textarea, #run-eval-ipp input").first.fill("1")
        page.locator("#run-eval-go").click()
        msg = page.locator("#run-eval-message")
        msg.wait_for()
        assert msg.get_attribute("data-evaluation-id"), msg.inner_text()
        eid = int(msg.get_attribute("data-evaluation-id"))
        assert ev.get_evaluation(eid).status == "queued", "the request thread only queues the evaluation"
        outcome = execute_queued(eid)  # what the worker's task does
        assert outcome == "succeeded", [(r.id, r.model.kind, r.status, r.error) for r in ev.list_evaluations()]
        page.locator("button[role=tab]:has-text('Evaluations')").first.click()
        cell = page.locator(f'#run-evaluations td[data-eval="{eid}"][data-metric="toy_alignment"]')
        _wait_for(lambda: cell.count() == 1, 60, "the evaluations table")
        mine = ev.get_evaluation(eid)
        base = [r for r in ev.list_evaluations() if r.model.kind == "base"]
        assert len(base) == 1 and base[0].protocol_hash == mine.protocol_hash
        for metric in ("toy_alignment", "toy_fidelity", "toy_palette_purity"):
            shown = page.locator(f'#run-evaluations td[data-eval="{eid}"][data-metric="{metric}"]').inner_text()
            assert shown.startswith(f"{mine.metrics[metric]:.4f}"), (metric, shown)
            shown_base = page.locator(f'#run-evaluations td[data-eval="base"][data-metric="{metric}"]').inner_text()
            assert shown_base == f"{base[0].metrics[metric]:.4f}", (metric, shown_base)
        page.screenshot(path=os.path.join(ARTIFACTS, "run_evaluations.png"), full_page=True)

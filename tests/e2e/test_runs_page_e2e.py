"""Browser: the Runs page on a fresh store (issue #13). The empty state says what to do and its
one button enqueues the toy A/B pair and lands on the pair's Compare page; the table is
read-only (clicking a cell shows no row/column selection arrows); the actions are separate
buttons, shown only once a run is selected. Same served app as test_ui_e2e.py (trainer double)."""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e.test_ui_e2e import ARTIFACTS, page, server  # noqa: F401  (fixtures: a fresh served store per module)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

def test_runs_page_empty_state_toy_pair_and_read_only_table(server, page):  # noqa: F811
    url = server["url"]
    # Experiments on a fresh store: what an experiment is and the one-click example, no blank plot frames
    page.goto(url + "/experiments", wait_until="domcontentloaded")
    page.locator("#experiments-empty-note").wait_for(state="visible")
    assert "An experiment is arms × seeds" in page.locator("#experiments-empty-note").inner_text()
    assert page.locator("#start-example-study").is_visible()
    page.locator("#exp-plot-proxy").wait_for(state="hidden")
    assert page.locator("#experiments-table").is_hidden() and page.locator("#exp-plot-ratio").is_hidden()
    page.screenshot(path=os.path.join(ARTIFACTS, "experiments_empty.png"), full_page=True)

    page.goto(url + "/", wait_until="domcontentloaded")
    page.locator("#runs-empty-note").wait_for()
    page.screenshot(path=os.path.join(ARTIFACTS, "runs_empty.png"), full_page=True)
    assert "No runs yet" in page.locator("#runs-empty-note").inner_text()
    assert page.locator("#runs-table").is_hidden(), "no bare header row on an empty store"
    assert page.locator("#act-open").is_hidden(), "no actions while nothing is selected"
    assert page.locator("#selected-run").is_hidden(), "no 'Selected run / click a row' box without a row"

    page.locator("#start-toy-pair").click()
    page.wait_for_url(re.compile(r".*/compare\?runs=\d+,\d+"), timeout=60_000)
    # the Compare page fills in by itself as the pair's first eval images and points arrive (no Refresh)
    page.locator("#compare-side-cards img").first.wait_for(state="visible", timeout=90_000)
    page.locator("#compare-proxy .scatterlayer .trace").first.wait_for(state="attached", timeout=60_000)

    page.goto(url + "/", wait_until="domcontentloaded")
    page.locator("#runs-table").wait_for(state="visible")
    assert page.locator("#runs-empty").is_hidden()
    # Gradio 6 draws rows as div.virtual-row (its <table> is a hidden copy kept for measuring)
    page.locator("#runs-table .virtual-row .body-cell").nth(2).click()
    page.locator("#act-open").wait_for(state="visible")
    shown_arrows = page.locator("#runs-table .selection-button").evaluate_all(
        "els => els.filter(e => e.getBoundingClientRect().width > 0).length")
    assert shown_arrows == 0, "a read-only table shows no selection arrows on a clicked cell"
    left = page.locator("#act-open").bounding_box()
    right = page.locator("#act-stop").bounding_box()
    assert right["x"] - (left["x"] + left["width"]) >= 4, "actions are separate buttons, not abutting cells"
    assert page.locator("#selected-run textarea, #selected-run input").first.input_value().isdigit()


def test_serve_terminal_shows_our_lines_only(server):  # noqa: F811
    """Celery's banner and warnings go to <data-dir>/logs/workers.log, not serve's terminal."""
    import time

    with open(os.path.join(server["data"], "serve.log"), errors="replace") as fh:
        terminal = fh.read()
    assert "GRPO-Guard Studio on http://" in terminal and "their log:" in terminal, terminal[-2000:]
    for noise in ("[queues]", "[config]", "SecurityWarning", "embedded1@"):
        assert noise not in terminal, f"{noise!r} reached serve's terminal:\n{terminal[-2000:]}"
    log = os.path.join(server["data"], "logs", "workers.log")
    deadline = time.monotonic() + 30
    while not (os.path.exists(log) and "[queues]" in open(log, errors="replace").read()):  # noqa: SIM115
        assert time.monotonic() < deadline, "the workers' Celery output is not in logs/workers.log"
        time.sleep(0.5)

"""Browser end-to-end: `grpo-guard serve` on a temporary store (embedded broker and worker),
driven by Debian's Chromium through Playwright (no browser download, STACK.md §11).

Creates a toy run from the New-run form (after checking that a bad field is reported next to
it and enqueues nothing), watches its status and a plot update on the Run page, stops it,
opens Compare and the Runs table. Screenshots go to test-artifacts/e2e/.

The worker runs the in-memory trainer double (tests/worker/fake_trainer.py: the real loop's
contract at 0.3 s an epoch) so the test checks the UI in well under a minute on a shared CPU;
set GG_E2E_REAL_TRAINER=1 to run the real toy trainer instead (needs the toy base model).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(ROOT, "test-artifacts", "e2e")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"grpo-guard serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"grpo-guard serve did not answer /health within {timeout:.0f} s")


def stop_group(proc: subprocess.Popen) -> None:
    """End the process group a test started (``serve`` and its workers): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def chromium_page() -> Iterator:
    """A page in Debian's headless Chromium (STACK.md B1/B2), 1400×1000, 60 s default timeout."""
    from playwright.sync_api import sync_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-store")
    port = _free_port()
    env = {**os.environ, "GG_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT}
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS", "GG_BROKER_URL", "GG_AUTH", "GG_AUTH_FILE"):
        env.pop(k, None)
    if os.environ.get("GG_E2E_REAL_TRAINER") != "1":
        env.update(GG_TRAINER="tests.worker.fake_trainer:train", GG_FAKE_STEP_SECONDS="0.3")
    log = open(data / "serve.log", "w")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc, timeout=180)
        yield {"url": url, "data": str(data), "env": env}
    finally:
        stop_group(proc)
        log.close()
        with open(data / "serve.log") as fh:
            tail = fh.read()[-4000:]
        os.makedirs(ARTIFACTS, exist_ok=True)
        with open(os.path.join(ARTIFACTS, "serve.log"), "w") as fh:
            fh.write(tail)


@pytest.fixture(scope="module")
def page(server):
    with chromium_page() as pg:
        yield pg


def _shot(page, name: str) -> None:
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"), full_page=True)


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")  # commit the value (change event)


def _store_runs(server) -> list:
    """The runs in the server's store, read directly (another process, same SQLite file)."""
    code = ("import json; from grpo_guard.store import queries as q; "
            "rows = [(r, q.get_run(r.id).config) for r in q.list_runs()]; "
            "print(json.dumps([[r.id, r.status, r.name, c['group_size'], c['epochs'], c['eval_every']] for r, c in rows]))")
    out = subprocess.run([sys.executable, "-c", code], env=server["env"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def _header(page) -> tuple[str, int]:
    h = page.locator("#run-header")
    return h.get_attribute("data-status"), int(h.get_attribute("data-step"))


def _wait_for(cond, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def test_toy_run_from_the_form_to_compare(server, page):
    url = server["url"]

    # 1. New run: a bad field is shown next to it and nothing is enqueued.
    page.goto(url + "/new?preset=toy%20GRPO-Guard", wait_until="domcontentloaded")
    page.locator("#submit-run").wait_for()
    _wait_for(lambda: page.locator("#preset input").first.input_value() == "toy GRPO-Guard", 60, "the preset")
    _fill(page, "f-group_size", "1")
    page.locator("#submit-run").click()
    page.locator("#gg-form-error").wait_for()
    err = page.locator("#err-group_size")
    err.wait_for(state="visible")
    assert "greater than or equal to 2" in err.inner_text()
    assert "Nothing was enqueued" in page.locator("#gg-form-error").inner_text()
    assert _store_runs(server) == [], "an invalid form must not create a run"
    _shot(page, "new_run_error")

    # 2. ... fixed, it creates and enqueues one toy run.
    _fill(page, "f-group_size", "4")
    _fill(page, "f-epochs", "300")
    _fill(page, "f-eval_every", "2")
    _fill(page, "run-name", "e2e toy run")
    page.locator("#submit-run").click()
    # 2b. ... and the browser goes to the new run's page (the confirmation was out of view).
    page.wait_for_url(re.compile(r".*/run\?run=\d+"), timeout=60_000)
    run_id = int(page.url.rsplit("=", 1)[1])
    runs = _store_runs(server)
    assert [r[0] for r in runs] == [run_id] and runs[0][2] == "e2e toy run"
    assert runs[0][3:] == [4, 300, 2], "the stored config must hold what was typed into the form"

    # 3. Run page: status goes running, and the plots update while it trains.
    page.goto(f"{url}/run?run={run_id}", wait_until="domcontentloaded")
    page.locator("#run-header").wait_for()
    _wait_for(lambda: _header(page)[0] == "running", 120, "the run to start")
    _, step0 = _header(page)
    _wait_for(lambda: page.locator("#plot-proxy-gold .scatterlayer .trace").count() >= 2, 60,
              "proxy and gold curves")

    def points() -> int:
        return page.evaluate("""() => {
            const el = document.querySelector('#plot-rewards .js-plotly-plot');
            if (!el || !el._fullData) return 0;
            return Math.max(0, ...el._fullData.map(t => t._length || 0));
        }""")

    n0 = points()
    _wait_for(lambda: _header(page)[1] >= step0 + 3 and points() > n0, 90, "the live refresh to draw new steps")
    _shot(page, "run_live")

    # 3b. A zoom survives the live refresh (Gradio re-creates the plot; app.main.KEEP_ZOOM_JS).
    page.locator("#run-live input").uncheck()  # hold the refresh while dragging
    time.sleep(2)
    page.locator("#plot-rewards").scroll_into_view_if_needed()
    drag = _wait_for(lambda: page.locator("#plot-rewards .nsewdrag").first.bounding_box(), 10, "the plot")
    page.mouse.move(drag["x"] + 0.2 * drag["width"], drag["y"] + 0.5 * drag["height"])
    page.mouse.down()
    page.mouse.move(drag["x"] + 0.5 * drag["width"], drag["y"] + 0.5 * drag["height"], steps=8)
    page.mouse.up()
    x_range = """() => { const l = document.querySelector('#plot-rewards .js-plotly-plot')._fullLayout.xaxis;
                         return [l.autorange, l.range.map(v => +v.toFixed(3))]; }"""
    zoomed = page.evaluate(x_range)
    assert zoomed[0] is False, "the drag should have zoomed the x axis"
    page.locator("#run-live input").check()
    n1, step1 = points(), _header(page)[1]
    _wait_for(lambda: _header(page)[1] >= step1 + 2 and points() > n1, 90, "a refresh after zooming")
    time.sleep(0.5)
    assert page.evaluate(x_range) == zoomed, "the refresh reset the user's zoom"

    # 4. Stop it: the trainer checkpoints and ends cancelled.
    page.locator("#run-stop").click()
    page.locator("#run-message .gg-ok").wait_for()
    _wait_for(lambda: _header(page)[0] == "cancelled", 90, "the run to stop")
    _shot(page, "run_stopped")

    # 5. Compare opens on that run, with its curves and an eval image.
    page.goto(f"{url}/compare?runs={run_id}", wait_until="domcontentloaded")
    _wait_for(lambda: page.locator("#compare-proxy .scatterlayer .trace").count() >= 1, 90, "the compare curves")
    _wait_for(lambda: page.locator("#compare-side-cards img").count() >= 1, 60, "the side-by-side image")
    _shot(page, "compare")

    # 6. Runs table lists it as cancelled.
    page.goto(url + "/", wait_until="domcontentloaded")
    _wait_for(lambda: "cancelled" in page.locator("#runs-table").inner_text(), 60, "the runs table")
    assert "e2e toy run" in page.locator("#runs-table").inner_text()
    _shot(page, "runs")

"""Browser end-to-end of the Experiments page: `grpo-guard serve` on a store holding an
experiment of 2 arms × 3 seeds + controls (tests/experiment_data.py), driven by Debian's
Chromium through Playwright. The Plotly data read back from the page (each arm's mean and band
edges, gold at equal proxy, gold beyond noise) equals the statistics computed from the store;
the list shows the experiment's progress and the view links to every run and to Compare; the
New-run page starts an experiment ("run as experiment"). Screenshots go to test-artifacts/e2e/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import served, store_env
from tests.e2e.test_ui_e2e import (
    ARTIFACTS,
    ROOT,
    _wait_for,
    chromium_page,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READ_TRACES = """(sel) => {
    const gd = document.querySelector(sel + ' .js-plotly-plot');
    if (!gd || !gd._fullData || !gd._fullData.length) return null;
    // _fullData holds the arrays plotly.js decoded from the figure's base64 typed arrays
    return gd._fullData.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || [])}));
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-exp")
    env = store_env(data)
    made = subprocess.run([sys.executable, "-c", "from grpo_guard.store import db; db.upgrade(); "
                           "from tests.experiment_data import stored_experiment; print(stored_experiment())"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    with served(data, env) as url:
        yield {"url": url, "env": env, "experiment": int(made.stdout.strip().splitlines()[-1]), "data": str(data)}


@pytest.fixture(scope="module")
def page(server):
    with chromium_page() as pg:
        yield pg


@pytest.fixture(scope="module")
def stats(server):
    """The statistics computed from the server's store in this process (same SQLite file)."""
    from grpo_guard.experiments.report import load_curves
    from grpo_guard.experiments.stats import experiment_stats
    from grpo_guard.store import db

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GG_DATA_DIR", server["data"])
        for k in ("GG_DATABASE_URL", "GG_ARTIFACTS"):
            mp.delenv(k, raising=False)
        try:
            yield experiment_stats(load_curves(server["experiment"]))
        finally:
            db.dispose_engines()


def _trace(traces, name):
    return next(t for t in traces if t["name"] == name)


def test_the_experiment_view_plots_the_store_statistics(server, page, stats):
    eid = server["experiment"]
    page.goto(f"{server['url']}/experiments?experiment={eid}", wait_until="domcontentloaded")
    page.locator("#exp-title").wait_for()
    assert page.locator("#exp-title").get_attribute("data-experiment-id") == str(eid)
    gold = _wait_for(lambda: page.evaluate(READ_TRACES, "#exp-plot-gold"), 60, "the gold bands")
    for arm in ("flow", "guard", "flow/control", "guard/control"):
        steps, est = stats.gold[arm]
        mean = _trace(gold, arm)
        assert mean["x"] == steps and mean["y"] == pytest.approx([e.mean for e in est], abs=1e-9)
        hi, lo = [t for t in gold if t["name"] == f"{arm} 95% CI"]
        assert hi["y"] == pytest.approx([e.hi for e in est], abs=1e-9)
        assert lo["y"] == pytest.approx([e.lo for e in est], abs=1e-9)
    proxy = page.evaluate(READ_TRACES, "#exp-plot-proxy")
    assert _trace(proxy, "guard")["y"] == pytest.approx([e.mean for e in stats.proxy["guard"][1]], abs=1e-9)
    gp = page.evaluate(READ_TRACES, "#exp-plot-gold-proxy")
    assert _trace(gp, "flow")["x"] == pytest.approx(stats.levels, abs=1e-9)
    assert _trace(gp, "flow")["y"] == pytest.approx([e.mean for e in stats.gold_at_proxy["flow"]], abs=1e-9)
    beyond = page.evaluate(READ_TRACES, "#exp-plot-beyond")
    assert _trace(beyond, "guard")["y"] == pytest.approx([e.mean for e in stats.beyond_step["guard"][1]], abs=1e-9)
    assert page.locator("#exp-equal-proxy").inner_text().count("±") == 2 * len(stats.levels)
    assert page.locator('#exp-runs-table a[href^="run?run="]').count() == 12
    assert page.locator('#exp-header a[href^="compare?runs="]').count() == 3
    page.screenshot(path=os.path.join(ARTIFACTS, "experiment_view.png"), full_page=True)
    page.locator("#exp-report").click()  # the report `grpo-guard experiment report` writes, downloadable
    _wait_for(lambda: page.locator("#exp-report-files a").count() == 3, 60, "the report files")
    listed = page.locator("#exp-report-files").inner_text()
    assert all(name in listed for name in ("table.md", "figure.png", "stats.json")), listed

    # the list shows its progress across the 12 runs (epochs done / epochs in all)
    listed = page.locator("#experiments-table").inner_text()
    assert "synthetic study" in listed and "144 / 144" in listed and "succeeded" in listed


def test_run_as_experiment_from_the_new_run_page(server, page):
    page.goto(f"{server['url']}/new", wait_until="domcontentloaded")
    page.locator("#submit-run").wait_for()
    page.locator("#sec-experiment").get_by_text("Run as experiment: arms").first.click()
    box = page.locator("#exp-seeds input, #exp-seeds textarea").first
    box.fill("0 1")
    box.press("Tab")
    page.locator("#submit-experiment").click()
    ok = page.locator("#gg-submitted-experiment")
    ok.wait_for()
    new = int(ok.get_attribute("data-experiment-id"))
    assert new != server["experiment"] and "8 runs" in ok.inner_text(), "2 arms × 2 seeds + controls"
    page.goto(f"{server['url']}/experiments?experiment={new}", wait_until="domcontentloaded")
    page.locator("#exp-title").wait_for()
    assert page.locator('#exp-runs-table a[href^="run?run="]').count() == 8
    page.locator("#exp-stop").click()
    _wait_for(lambda: "asked 8 active run(s) to stop" in page.locator("#exp-message").inner_text(), 30, "the stop")

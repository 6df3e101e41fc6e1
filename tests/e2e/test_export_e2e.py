"""Browser end-to-end of the Run page's Export…: on a store holding a toy LoRA run with a
checkpoint, open the Checkpoints tab, click Export… → Export (auto format, auto weights, best
step). The click returns at once (the export runs in a subprocess of the app), the jobs table
shows its progress and then *done*, and the zip offered for download holds the LoRA file and a
card naming the run."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.e2e.test_ui_e2e import (
    ARTIFACTS,
    ROOT,
    _free_port,
    _wait_for,
    _wait_health,
    chromium_page,
    stop_group,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-export")
    env = {**os.environ, "GG_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT}
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS", "GG_BROKER_URL", "GG_AUTH", "GG_AUTH_FILE"):
        env.pop(k, None)
    made = subprocess.run([sys.executable, "-m", "tests.e2e.eval_data"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    port = _free_port()
    log = open(data / "serve.log", "w")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port), "--no-worker"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc, timeout=180)
        yield {"url": url, "run": int(made.stdout.strip().splitlines()[-1]), "data": str(data)}
    finally:
        stop_group(proc)
        log.close()


def test_export_runs_in_the_background_and_offers_the_zip(server):
    rid = server["run"]
    with chromium_page() as page:
        page.goto(f"{server['url']}/run?run={rid}", wait_until="domcontentloaded")
        page.locator("#run-prompt-overlap").wait_for()  # the run is loaded
        page.locator("#tab-checkpoints-button, button[role=tab]:has-text('Checkpoints')").first.click()
        page.locator("#run-export").get_by_text("Export…").first.click()
        page.locator("#run-export-start").click()
        msg = page.locator("#run-export-message")
        _wait_for(lambda: "in the background" in msg.inner_text(), 30, "the export's start message")
        table = page.locator("#run-export-jobs")
        _wait_for(lambda: "running" in table.inner_text() or "done" in table.inner_text(), 30, "the running job")
        _wait_for(lambda: "done" in table.inner_text(), 300, "the export to finish")
        link = page.locator("#run-export-files a[download], #run-export-files a").first
        _wait_for(lambda: link.count() == 1 and ".zip" in (link.get_attribute("href") or ""), 60, "the zip link")
        page.screenshot(path=os.path.join(ARTIFACTS, "run_export.png"), full_page=True)
        body = page.request.get(link.get_attribute("href") if link.get_attribute("href").startswith("http")
                                else server["url"] + link.get_attribute("href")).body()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        top = names[0].split("/")[0]
        assert sorted(n.split("/", 1)[1] for n in names) == ["README.md", "pytorch_lora_weights.safetensors"]
        card = zf.read(f"{top}/README.md").decode()
    assert f"(run #{rid})" in card and "chosen as: **best gold**" in card
    assert "the raw weights (the checkpoint keeps no EMA)" in card  # auto: the stored checkpoint has none
    assert f"pipe.load_lora_weights('{top}')" in card, "the card loads the folder as it unzips"

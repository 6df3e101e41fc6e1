"""Browser end-to-end of the Run page's Export…: on a store holding a toy LoRA run with a
checkpoint, open the Checkpoints tab, click Export… → Export (auto format, auto weights, best
step). The click returns at once (the export runs in a subprocess of the app), the jobs table
shows its progress and then *done*, and the zip offered for download holds the LoRA file and a
card naming the run."""

from __future__ import annotations

import io
import os
import zipfile

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

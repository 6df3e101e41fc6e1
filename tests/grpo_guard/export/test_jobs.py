"""Export jobs for the web app (``grpo_guard.export.jobs``) and the Export… panel's callbacks:
the subprocess is replaced by a double that speaks the CLI's protocol (progress lines on stderr,
``Error: <sentence>`` and an exit status), so no model is loaded here (``--zip`` itself is tested with the
CLI in test_export_store)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from tests.grpo_guard.export.helpers import fill_run, make_config
from tests.storehelpers import backend_env


class FakeProc:
    """Writes the --zip file like the real command when told to succeed."""

    def __init__(self, cmd, lines, rc, release):
        self.cmd, self.pid, self._rc, self._release = cmd, os.getpid(), rc, release
        self._lines = lines

    @property
    def stderr(self):
        for line in self._lines:
            yield line + "\n"
        self._release.wait(10)

    def wait(self):
        if self._rc == 0:
            with open(self.cmd[self.cmd.index("--zip") + 1], "wb") as fh:
                fh.write(b"PK\x05\x06" + b"\x00" * 18)
        return self._rc


@pytest.fixture()
def store(tmp_path):
    with backend_env("sqlite", tmp_path):
        yield tmp_path


def _wait(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_job_runs_in_the_background_and_offers_the_zip(store):
    from grpo_guard.export import jobs

    run_id = fill_run(str(store), make_config("toy", 4, ""), real=False)
    release, seen = threading.Event(), {}

    def popen(cmd, **kw):
        seen["cmd"], seen["kw"] = cmd, kw
        return FakeProc(cmd, ["export: reading checkpoint x", "export: writing the LoRA weights"], 0, release)

    job = jobs.start_export(run_id, step="best", weights="ema", fmt="lora", popen=popen)
    assert job.status == "running"
    assert seen["cmd"][:5] == [sys.executable, "-m", "grpo_guard.cli", "export", str(run_id)]
    out = seen["cmd"][seen["cmd"].index("--out") + 1]
    assert out.startswith(os.path.join(os.environ["GG_ARTIFACTS"], "runs"))
    # the card names the folder as it unzips, not the server's path
    assert seen["cmd"][seen["cmd"].index("--card-path") + 1] == os.path.basename(out)
    assert _wait(lambda: jobs.list_exports(run_id)[0].progress == "writing the LoRA weights")
    with pytest.raises(jobs.ExportError, match="already exporting"):
        jobs.start_export(run_id, popen=popen)
    release.set()
    assert _wait(lambda: jobs.list_exports(run_id)[0].status == "done")
    (done,) = jobs.list_exports(run_id)
    assert done.zip_path and os.path.isfile(done.zip_path) and (done.step, done.format, done.weights) == ("best", "lora", "ema")


def test_failure_and_interruption_are_shown(store):
    from grpo_guard.export import jobs

    run_id = fill_run(str(store), make_config("toy", 4, ""), real=False)
    release = threading.Event()
    release.set()
    jobs.start_export(run_id, step="last", popen=lambda cmd, **kw: FakeProc(
        cmd, ["export: loading", "Error: the toy base model directory '/x' does not exist; put it back."], 1, release))
    assert _wait(lambda: jobs.list_exports(run_id)[0].status == "failed")
    assert jobs.list_exports(run_id)[0].error == "the toy base model directory '/x' does not exist; put it back."
    # a job whose process is gone without a zip (the app restarted): interrupted, and a new one may start
    done = threading.Event()
    done.set()
    gone = jobs.start_export(run_id, step="10", popen=lambda cmd, **kw: FakeProc(cmd, [], 1, done))
    assert _wait(lambda: jobs.list_exports(run_id)[0].status != "running")
    path = os.path.join(os.environ["GG_ARTIFACTS"], "runs", str(run_id), "exports", gone.name + ".json")
    import json

    with open(path) as fh:
        data = json.load(fh)
    data.update(status="running", pid=2 ** 22 + 12345)  # as left by an app killed mid-export
    with open(path, "w") as fh:
        json.dump(data, fh)
    assert {j.name: j.status for j in jobs.list_exports(run_id)}[gone.name] == "interrupted"


def test_bad_requests_are_refused_before_anything_starts(store):
    from grpo_guard.export import jobs

    run_id = fill_run(str(store), make_config("toy", 4, ""), real=False)

    def never(*a, **k):
        raise AssertionError("nothing may start")

    for kwargs, text in (({"step": "2"}, "pruned"), ({"step": "soon"}, "best, last or an epoch"),
                         ({"weights": "fp8"}, "auto, ema or raw"), ({"fmt": "ckpt"}, "lora or pipeline")):
        with pytest.raises(jobs.ExportError, match=text):
            jobs.start_export(run_id, popen=never, **kwargs)
    with pytest.raises(jobs.ExportError, match="no run 77"):
        jobs.start_export(77, popen=never)
    assert jobs.list_exports(run_id) == []


def test_panel_callbacks(store, monkeypatch):
    from app.pages import run_export
    from grpo_guard.export import jobs

    run_id = fill_run(str(store), make_config("toy", 4, ""), real=False)
    assert "Pick a run" in run_export.start(None, "auto", "auto", "best")
    assert "pruned" in run_export.start(run_id, "auto", "auto", "2")
    release = threading.Event()
    release.set()
    real = jobs.start_export
    monkeypatch.setattr(jobs, "start_export", lambda *a, **k: real(
        *a, popen=lambda cmd, **kw: FakeProc(cmd, ["export: done"], 0, release), **k))
    assert "in the background" in run_export.start(str(run_id), "pipeline", "raw", "last")
    assert _wait(lambda: jobs.list_exports(run_id)[0].status == "done")
    table, files, sig = run_export.refresh(run_id, None)
    assert "done" in table and "pipeline" in table and "raw" in table
    assert files == [jobs.list_exports(run_id)[0].zip_path]
    import gradio as gr

    assert run_export.refresh(run_id, sig) == (gr.skip(), gr.skip(), sig)  # unchanged: nothing resent
    # another export's progress redraws the table but does not resend the zips (Gradio would
    # reread every one of them, tens of GB for a large pipeline, at each progress line)
    hold = threading.Event()
    monkeypatch.setattr(jobs, "start_export", lambda *a, **k: real(
        *a, popen=lambda cmd, **kw: FakeProc(cmd, ["export: loading the base model"], 0, hold), **k))
    assert "in the background" in run_export.start(str(run_id), "lora", "ema", "best")
    assert _wait(lambda: jobs.list_exports(run_id)[0].progress == "loading the base model")
    table, files, sig2 = run_export.refresh(run_id, sig)
    assert "loading the base model" in table and files == gr.skip() and sig2 != sig
    hold.set()
    assert _wait(lambda: jobs.list_exports(run_id)[0].status == "done")
    table, files, _ = run_export.refresh(run_id, sig2)
    assert files == [j.zip_path for j in jobs.list_exports(run_id)] and len(files) == 2


def test_the_zip_download_needs_the_login(store, monkeypatch):
    """The finished zip is served like every artifact: behind the app's login, and only there."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from grpo_guard.export import jobs

    run_id = fill_run(str(store), make_config("toy", 4, ""), real=False)
    release = threading.Event()
    release.set()
    jobs.start_export(run_id, popen=lambda cmd, **kw: FakeProc(cmd, [], 0, release))
    assert _wait(lambda: jobs.list_exports(run_id)[0].status == "done")
    zip_path = jobs.list_exports(run_id)[0].zip_path
    monkeypatch.setenv("GG_AUTH", "ann:pw")
    with TestClient(create_app(host="0.0.0.0", port=7998)) as c:
        assert c.get(f"/gradio_api/file={zip_path}").status_code == 401
        assert c.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
        r = c.get(f"/gradio_api/file={zip_path}")
        with open(zip_path, "rb") as fh:
            assert r.status_code == 200 and r.content == fh.read()

"""Corrupt artifacts: a truncated checkpoint fails the resume with one stored sentence (the task
body returns, the worker process lives on, nothing stored is lost); an eval image that is not an
image, and one whose file is gone, leave every page function working with a message."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import update

from grpo_guard.config import RunConfig
from grpo_guard.store import db, queries
from grpo_guard.store.models import Run
from tests.hardening.helpers import BACKENDS
from tests.storehelpers import backend_env


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, tmp_path_factory):
    from app import common, run_cache

    with backend_env(request.param, tmp_path_factory.mktemp(f"corrupt-{request.param}")) as url:
        run_cache.forget()
        common._ONSET_CACHE.clear()
        yield url
        run_cache.forget()
        common._ONSET_CACHE.clear()


@pytest.mark.slow
def test_a_truncated_checkpoint_fails_the_resume_with_one_sentence(store, monkeypatch):
    torch = pytest.importorskip("torch")
    import worker.tasks
    from tests.worker import fake_trainer

    monkeypatch.setattr(worker.tasks, "TRAIN_FN", fake_trainer.train)
    monkeypatch.setenv("GG_FAKE_STEP_SECONDS", "0.01")
    rid = queries.create_run(RunConfig.from_dict({"epochs": 4, "num_steps": 3, "eval_every": 2, "checkpoint_every": 2,
                                                  "eval_seeds": [0]}))
    assert worker.tasks.execute_run(rid) == "succeeded"
    with db.session_scope(write=True) as s:  # as if it had been stopped, then resumed
        s.execute(update(Run).where(Run.id == rid).values(status="cancelled"))
    last = queries.checkpoints(rid)[-1]
    # the double records ckpt_N.json; the real trainer reads the ckpt_N.pt beside its sidecar
    path = os.path.splitext(queries.artifact_path(last.location))[0] + ".pt"
    torch.save({"trainable": {"w": torch.zeros(4096)}, "config": "{}", "step": 4}, path)
    with open(path, "rb") as fh:
        blob = fh.read()
    with open(path, "wb") as fh:  # a copy cut off half way, as a full disk or a kill leaves it
        fh.write(blob[: len(blob) // 2])
    before = queries.metric_series(rid, ["loss"])["loss"]
    queries.resume_run(rid)
    monkeypatch.setattr(worker.tasks, "TRAIN_FN", None)  # the real trainer reads the checkpoint
    monkeypatch.setenv("GG_TRAINER", "")
    assert worker.tasks.execute_run(rid) == "failed", "the task body must return, not crash the worker"
    row = queries.get_run(rid)
    assert row.status == "failed"
    assert "\n" not in row.error and row.error.count(". ") <= 1, f"one sentence: {row.error!r}"
    assert "cannot be read" in row.error and "truncated" in row.error and os.path.basename(path) in row.error
    assert queries.metric_series(rid, ["loss"])["loss"] == before, "nothing stored may be lost"
    assert any("failed" in ln.message for ln in queries.log_lines(rid))


def test_pages_degrade_with_a_message_for_broken_and_missing_images(store):
    from app import figures as F
    from app.pages import compare as C
    from app.pages import run_detail as R
    from app.pages import runs as RU
    from tests.app import synthetic

    rid = synthetic.make_run("grpo_guard", 21, eval_every=10, ckpt_every=10, name="broken-images")
    samples = queries.samples_for(rid, seed=0)
    by_step = {}
    for s in samples:
        by_step.setdefault(s.step, []).append(s)
    not_png = queries.artifact_path(by_step[10][0].image_location)
    with open(not_png, "wb") as fh:
        fh.write(b"<html>this is not a png</html>")
    gone = queries.artifact_path(by_step[20][0].image_location)
    os.unlink(gone)
    ck = queries.checkpoints(rid)
    os.unlink(queries.artifact_path(ck[-1].location))  # a checkpoint file gone too

    # Compare: the grid marks both cells with the reason, the rest still show
    steps = queries.sample_steps(rid)
    prompts = sorted({s.prompt for s in samples})
    html = C.grid_html(samples, steps, prompts, 10, queries.artifact_path)
    assert "not a PNG" in html and "image file missing" in html
    assert html.count("<img") == len(steps) * len(prompts) - 2
    for step, prompt, needle in ((10, by_step[10][0].prompt, "not a PNG"), (20, by_step[20][0].prompt, "missing")):
        side, grid, _, _ = C.images([rid], step, prompt, 0, rid, rid, rid)
        assert needle in side and "<img" not in side
        pair, info = C.wipe_images(rid, step, rid, 0, prompt, 0)
        assert pair is None and needle in info
    pair, _ = C.wipe_images(rid, 0, rid, 0, prompts[0], 0)
    assert pair is not None, "intact images still show"

    # Run page and runs table: every figure, the header, the checkpoint list
    out = R.render_run(rid, R.poll_cursor(rid), False, None)
    for fig in out[: len(R.FIGURE_NAMES)]:
        assert not F.is_empty(fig)
    files = out[len(R.FIGURE_NAMES) + 2]
    assert all(os.path.exists(p) for p in files), "a missing checkpoint file is not offered for download"
    rows, _, _ = RU.render([], None, None, "created", True)
    assert rid in [r[0] for r in rows]

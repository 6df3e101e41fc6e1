"""``grpo-guard export RUN_ID``: the checkpoint the store names, a card whose every field equals
the store, bad input as one sentence with nothing left behind, and the hub upload at the
``huggingface_hub`` boundary (the hub is unreachable here: the upload itself is not run)."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from grpo_guard import metrics as M
from grpo_guard.config import RunConfig
from tests.grpo_guard.export.helpers import base_model, fill_run, make_checkpoint, make_config
from tests.storehelpers import backend_env


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-store")
    with backend_env("sqlite", root) as url:
        config = make_config("sd3", 4, base_model("sd3", str(root)))
        run_id = fill_run(str(root), config)
        yield {"root": root, "url": url, "run_id": run_id, "config": config}


def _cli(*args: str):
    from grpo_guard.cli import main

    return CliRunner().invoke(main, ["export", *args])


def _one_sentence(output: str) -> str:
    lines = [x for x in output.strip().splitlines() if x.strip()]
    assert lines, output
    msg = lines[-1]
    assert msg.startswith("Error: "), output
    assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence
    return msg


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_from_store_reads_step_eval_alarm_and_samples(backend, tmp_path):
    """Which checkpoint best / last / N is, and what the store says about it, on both backends
    (no model is loaded)."""
    from grpo_guard.export.facts import ExportError, from_store

    with backend_env(backend, tmp_path):
        run_id = fill_run(str(tmp_path), make_config("toy", 4, ""), real=False)
        best = from_store(run_id, "best")
        assert (best.step, best.reason) == (5, "best gold")
        assert best.eval_at_step == {M.EVAL_PROXY: 0.3, M.EVAL_GOLD: 0.625}
        assert best.eval_at_base == {M.EVAL_PROXY: 0.1, M.EVAL_GOLD: 0.5}
        assert best.alarm_onset == 10 and best.run_name == "export-me"
        assert sorted((p, s) for p, s, _ in best.samples) == [("a red circle", 0), ("a red circle", 1)]
        assert all(os.path.isfile(f) for _, _, f in best.samples)
        assert (from_store(run_id, "last").step, from_store(run_id, "last").reason) == (10, "last")
        assert from_store(run_id, 10).reason == "chosen"
        with pytest.raises(ExportError, match="pruned"):
            from_store(run_id, 2)
        with pytest.raises(ExportError, match="no checkpoint at step 7; on disk: 5, 10"):
            from_store(run_id, 7)
        with pytest.raises(ExportError, match="no run 999"):
            from_store(999)


def test_card_fields_equal_the_store(lora_run, tmp_path):
    from grpo_guard.store import queries

    out = tmp_path / "best"
    res = _cli(str(lora_run["run_id"]), "--out", str(out), "--zip", str(tmp_path / "best.zip"))
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(tmp_path / "best.zip") as zf:
        assert zf.read("best/README.md") == (out / "README.md").read_bytes()
        assert sorted(zf.namelist()) == [f"best/{n}" for n in sorted(os.listdir(out))]
    assert sorted(os.listdir(out)) == ["README.md", "eval_samples.png", "pytorch_lora_weights.safetensors"]
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    run = queries.get_run(lora_run["run_id"])
    assert front["library_name"] == "diffusers" and "lora" in front["tags"]
    assert "base_model" not in front  # a local directory is not a hub id
    assert "license" not in front  # the tiny base's license is unknown
    stored = RunConfig.from_dict(run.config)
    assert "```yaml\n" + stored.to_yaml().rstrip("\n") + "\n```" in text
    assert f"run #{run.id}" in text and run.name in text
    assert "Step (epoch) 5, chosen as: **best gold** (the checkpoint with the highest gold" in text
    assert "; the EMA weights (what evaluation sampled)" in text
    assert "| base model (step 0) | 0.1000 | 0.5000 |" in text
    assert "| this export (step 5) | 0.3000 | 0.6250 |" in text
    assert "fired at epoch 10" in text and "this step is before it" in text
    assert (f"- Epochs: {run.step} trained of the {stored.epochs} planned (run status: {run.status}), "
            f"{stored.prompts_per_epoch * stored.group_size} images per epoch") in text and run.step == 10
    assert f"Training prompts: `{stored.prompts}`; evaluation prompts: `{stored.eval_prompts}`" in text
    assert f"Algorithm: GRPO-Guard (Flow-GRPO with RatioNorm and gradient reweighting); dynamics `{stored.dynamics}`" in text
    assert f"LoRA rank {stored.lora_rank}, alpha {stored.lora_alpha:g}, targets {', '.join(stored.lora_targets)}" in text
    assert all(f"| {name} | {w:g} |" in text for name, w in stored.rewards.items())
    with Image.open(out / "eval_samples.png") as grid:
        assert grid.size == (64, 32)  # the two eval images of step 5 side by side
    assert "'a red circle'" in text and "manual_seed(0)" in text  # the snippet reproduces an eval image


def test_bad_input_is_one_sentence_and_leaves_nothing(lora_run, tmp_path):
    rid = str(lora_run["run_id"])
    before = sorted(os.listdir(tmp_path))
    assert "no run 999" in _one_sentence(_cli("999", "--out", str(tmp_path / "x")).output)
    assert "was pruned" in _one_sentence(_cli(rid, "--step", "2", "--out", str(tmp_path / "x")).output)
    assert "best, last or an epoch" in _one_sentence(_cli(rid, "--step", "newest", "--out", str(tmp_path / "x")).output)
    assert "RUN_ID or --checkpoint" in _cli("--out", str(tmp_path / "x")).output
    assert sorted(os.listdir(tmp_path)) == before
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    msg = _one_sentence(_cli(rid, "--out", str(tmp_path / "taken")).output)
    assert "already exists" in msg and "--force" in msg
    assert os.listdir(tmp_path / "taken") == ["mine.txt"]
    # the base model moved away: refused before anything is loaded or written
    base = lora_run["config"].model
    shutil.move(base, base + "-moved")
    try:
        msg = _one_sentence(_cli(rid, "--step", "10", "--out", str(tmp_path / "y")).output)
        assert base in msg and "does not exist" in msg
    finally:
        shutil.move(base + "-moved", base)
    assert sorted(os.listdir(tmp_path)) == sorted([*before, "taken"])


def test_a_failure_midway_leaves_nothing_and_force_replaces_only_when_done(lora_run, tmp_path, monkeypatch):
    from grpo_guard.export import build

    rid = str(lora_run["run_id"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "write_lora", boom)
    res = _cli(rid, "--step", "last", "--out", str(out), "--force")
    assert res.exit_code != 0
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["old.txt"]
    monkeypatch.undo()
    res = _cli(rid, "--step", "last", "--out", str(out), "--force", "--weights", "raw")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ["out"] and "old.txt" not in os.listdir(out)
    text = (out / "README.md").read_text()
    assert "chosen as: **last** (the run's latest checkpoint); the raw weights (the run kept an EMA; raw was asked for)" in text
    assert "No eval samples are stored for step 10" in text
    assert "| this export (step 10) | 0.5000 | 0.3750 |" in text and "at this step" in text


def test_full_fine_tuning_refuses_lora_and_missing_ema_is_refused(tmp_path):
    config = make_config("sd3", 0, base_model("sd3", str(tmp_path)))
    ckpt = make_checkpoint(config, str(tmp_path / "ck"), ema=False)
    msg = _one_sentence(_cli("--checkpoint", ckpt, "--format", "lora", "--out", str(tmp_path / "o")).output)
    assert "lora_rank 0" in msg and "--format pipeline" in msg
    msg = _one_sentence(_cli("--checkpoint", ckpt, "--weights", "ema", "--out", str(tmp_path / "o")).output)
    assert "keeps no EMA" in msg
    assert not (tmp_path / "o").exists()
    assert sorted(os.listdir(tmp_path)) == ["ck", "tiny_sd3"]


class _FakeApi:
    calls: list = []
    fail = False

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        _FakeApi.calls.append(("create_repo", repo_id, repo_type, private, exist_ok, self.token))
        if _FakeApi.fail:
            raise ConnectionError("hub unreachable\nmore details")
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message=None, repo_type=None):
        for op in operations:
            assert os.path.isfile(op.path_or_fileobj), op
        _FakeApi.calls.append(("create_commit", sorted(op.path_in_repo for op in operations), repo_id, repo_type))


def test_push_to_hub_at_the_huggingface_hub_boundary(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    _FakeApi.calls = []
    out = tmp_path / "pushed"
    res = _cli(str(lora_run["run_id"]), "--out", str(out), "--push-to-hub", "me/grpo-lora", "--private")
    assert res.exit_code == 0, res.output
    assert _FakeApi.calls == [
        ("create_repo", "me/grpo-lora", "model", True, True, "hf_test_token"),
        ("create_commit", ["README.md", "eval_samples.png", "pytorch_lora_weights.safetensors"], "me/grpo-lora", "model")]
    assert "pipe.load_lora_weights('me/grpo-lora')" in (out / "README.md").read_text()
    _FakeApi.fail = True
    try:
        res = _cli(str(lora_run["run_id"]), "--out", str(tmp_path / "again"), "--push-to-hub", "me/grpo-lora")
    finally:
        _FakeApi.fail = False
    msg = _one_sentence(res.output)
    assert "upload to the hub repo me/grpo-lora failed" in msg and "hf upload" in msg
    assert (tmp_path / "again" / "README.md").is_file()  # the export itself is kept


def test_sample_weights_raw_and_ema_are_different_models(lora_run, tmp_path):
    """`grpo-guard sample --weights` picks the checkpoint's raw or EMA weights (auto = EMA)."""
    from grpo_guard.cli import main
    from grpo_guard.store import queries

    ckpt = queries.artifact_path(queries.best_checkpoint(lora_run["run_id"]).location)
    images = {}
    for w in ("auto", "ema", "raw"):
        res = CliRunner().invoke(main, ["sample", "--checkpoint", ckpt, "--prompt", "a red circle", "--weights", w,
                                        "--out", str(tmp_path / f"{w}.png")])
        assert res.exit_code == 0, res.output
        images[w] = np.asarray(Image.open(tmp_path / f"{w}.png"))
    assert (images["auto"] == images["ema"]).all() and not (images["ema"] == images["raw"]).all()


def test_push_to_hub_uploads_linked_components_as_files(tmp_path, monkeypatch):
    """A pipeline export links the base's folders; the upload must carry their files."""
    import huggingface_hub

    from grpo_guard.export.exporter import push_to_hub

    (tmp_path / "base" / "vae").mkdir(parents=True)
    (tmp_path / "base" / "vae" / "config.json").write_text("{}")
    (tmp_path / "out" / "transformer").mkdir(parents=True)
    (tmp_path / "out" / "transformer" / "w.safetensors").write_bytes(b"w")
    os.symlink(tmp_path / "base" / "vae", tmp_path / "out" / "vae", target_is_directory=True)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    push_to_hub(str(tmp_path / "out"), "me/pipe")
    assert _FakeApi.calls[-1] == ("create_commit", ["transformer/w.safetensors", "vae/config.json"], "me/pipe", "model")


def _run_with_checkpoints(config: RunConfig, ckpts: dict[int, dict], gone: tuple[int, ...] = (),
                          progress: tuple[int, int] | None = None) -> int:
    """A run whose checkpoints (placeholder files) record ``ckpts`` {step: meta}; ``gone`` are
    deleted from disk afterwards."""
    from grpo_guard.store import queries
    from grpo_guard.store.recorder import StoreRecorder

    run_id = queries.create_run(config, name="no-best")
    rec = StoreRecorder(run_id, background=False)
    d = rec.checkpoint_dir()
    for step, meta in ckpts.items():
        path = os.path.join(d, f"ckpt_{step:06d}.pt")
        with open(path, "wb") as fh:
            fh.write(b"placeholder")
        rec.log_checkpoint(step, path, meta)
    for step in gone:
        os.remove(os.path.join(d, f"ckpt_{step:06d}.pt"))
    if progress:
        rec.set_progress(*progress)
    rec.close()
    return run_id


def test_no_best_checkpoint_says_why(tmp_path):
    """A short run whose gold never beat the base model (best_step 0: no checkpoint exists there)
    must not be told its best checkpoint "was pruned"; each cause has its own sentence."""
    from grpo_guard.export.facts import ExportError, from_store

    config = make_config("toy", 4, "", checkpoint_every=2)
    cases = [({1: {"best_step": 0}, 2: {"best_step": 0}}, (), "is the base model's own (step 0, before any training)"),
             ({2: {"best_step": -1}}, (), "has recorded no gold score"),
             ({2: {"best_step": 3}, 4: {"best_step": 3}}, (), "is at step 3, where no checkpoint was saved "
                                                              "(checkpoint_every 2)"),
             ({2: {"best_step": 2}, 4: {"best_step": 2}}, (2,), "(step 2) was deleted from disk")]
    with backend_env("sqlite", tmp_path):
        for ckpts, gone, text in cases:
            run_id = _run_with_checkpoints(config, ckpts, gone)
            with pytest.raises(ExportError) as err:
                from_store(run_id, "best")
            msg = str(err.value)
            assert text in msg and "export --step last or an epoch number." in msg, msg
            assert msg.count(". ") == 0, msg
            assert from_store(run_id, "last").step == max(set(ckpts) - set(gone))


def test_card_says_how_far_a_stopped_run_got(tmp_path):
    """The card's epochs are the store's: a run stopped early is not described by its plan."""
    from grpo_guard.export.card import CardFacts, render
    from grpo_guard.export.facts import from_store
    from grpo_guard.store import queries

    config = make_config("toy", 4, "", epochs=40)
    with backend_env("sqlite", tmp_path):
        run_id = _run_with_checkpoints(config, {2: {"best_step": 2}}, progress=(2, 40))
        chosen = from_store(run_id, "last")
        run = queries.get_run(run_id)
    assert (chosen.trained_epochs, chosen.run_status) == (2, run.status) and run.step == 2
    facts = CardFacts(config=config, step=2, step_reason="last", weights="raw", format="lora", load_from="/o",
                      base_model="/b", trained_epochs=2, run_status="cancelled")
    per_epoch = f"{config.prompts_per_epoch * config.group_size} images per epoch"
    assert f"- Epochs: 2 trained of the 40 planned (run status: cancelled), {per_epoch}" in render(facts)
    facts.trained_epochs = 40
    assert f"- Epochs: 40, {per_epoch}" in render(facts)


def test_checkpoint_path_of_a_stored_run_gets_the_stores_facts(lora_run, tmp_path):
    """`grpo-guard runs best` prints a path; exporting it with --checkpoint PATH must tell the same
    truth as the run id (step 0, the alarm, the samples), not what a lone file would."""
    from grpo_guard.store import queries

    ckpt = queries.artifact_path(queries.best_checkpoint(lora_run["run_id"]).location)
    out = tmp_path / "by-path"
    res = _cli("--checkpoint", ckpt, "--out", str(out))
    assert res.exit_code == 0, res.output
    text = (out / "README.md").read_text()
    assert f"(run #{lora_run['run_id']})" in text and "| base model (step 0) | 0.1000 | 0.5000 |" in text
    assert "fired at epoch 10" in text and (out / "eval_samples.png").is_file()


def test_checkpoint_of_a_train_folder_and_a_lone_file(tmp_path):
    """--checkpoint PATH: a `grpo-guard train --out` folder gives step 0, the alarm and the
    samples from its JSONL files; a lone file says the alarm is unknown instead of "did not fire"."""
    import json

    from grpo_guard.export.card import CardFacts, render
    from grpo_guard.export.facts import from_checkpoint
    from tests.grpo_guard.export.helpers import _png

    config = make_config("toy", 4, "")
    run = tmp_path / "trainrun"
    ckpt = make_checkpoint(config, str(run / "checkpoints"), step=5)
    lone = from_checkpoint(ckpt)
    assert not lone.history and lone.alarm_onset is None and lone.eval_at_base == {} and lone.samples == []
    text = render(CardFacts(config=config, step=5, step_reason=lone.reason, weights="ema", format="lora",
                            load_from="/o", base_model="/b", history=lone.history))
    assert "Over-optimisation alarm: unknown (only the checkpoint file" in text and "did not fire" not in text
    assert "No eval samples came with the checkpoint file." in text
    (run / "samples").mkdir()
    (run / "samples" / "a.png").write_bytes(_png(0))
    rows = [{"step": 0, M.EVAL_PROXY: 0.1, M.EVAL_GOLD: 0.5}, {"step": 5, M.EVAL_PROXY: 0.3, M.EVAL_GOLD: 0.6},
            {"step": 7, M.ALARM_ONSET: 7.0}]
    (run / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "samples.jsonl").write_text(json.dumps({"step": 5, "prompt": "a red circle", "seed": 1,
                                                   "image": "samples/a.png"}) + "\n")
    got = from_checkpoint(ckpt)
    assert got.history and got.step == 5 and got.alarm_onset == 7
    assert got.eval_at_base == {M.EVAL_PROXY: 0.1, M.EVAL_GOLD: 0.5}
    assert got.eval_at_step == {M.EVAL_PROXY: 0.3, M.EVAL_GOLD: 0.6}
    assert got.samples == [("a red circle", 1, str(run / "samples" / "a.png"))]

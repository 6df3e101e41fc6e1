"""``--format pipeline`` on disk: safetensors only, the base's unchanged components linked or,
with ``--copy``, copied (a copied export survives its base moving away, a linked one does not),
and the command-line choices that do not fit together refused before anything is written."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from tests.grpo_guard.export.helpers import base_model, make_checkpoint, make_config

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5", ".gguf")


def _cli(*args: str):
    from grpo_guard.cli import main

    return CliRunner().invoke(main, ["export", *args])


def _tree(folder: str) -> tuple[list[str], list[str]]:
    """(every file, following links; the links) relative to ``folder``."""
    files, links = [], []
    for here, dirs, names in os.walk(folder, followlinks=True):
        for n in dirs + names:
            if os.path.islink(os.path.join(here, n)):
                links.append(os.path.relpath(os.path.join(here, n), folder))
        files += [os.path.relpath(os.path.join(here, n), folder) for n in names]
    return sorted(files), sorted(links)


@pytest.fixture(scope="module")
def sd3_full(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = make_config("sd3", 0, base_model("sd3", str(root)))
    return root, config, make_checkpoint(config, str(root / "ck"), ema=False)


def test_linked_and_copied_pipelines(sd3_full, tmp_path):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from grpo_guard.training.checkpoint import load_checkpoint

    root, config, ckpt = sd3_full
    linked, copied = str(tmp_path / "linked"), str(tmp_path / "copied")
    for out, extra in ((linked, ()), (copied, ("--copy",))):
        res = _cli("--checkpoint", ckpt, "--format", "pipeline", "--out", out, *extra)
        assert res.exit_code == 0, res.output
    (lf, ll), (cf, cl) = _tree(linked), _tree(copied)
    assert lf == cf, "a linked and a copied export hold the same files"
    weights = [f for f in lf if f.endswith(WEIGHT_SUFFIXES)]
    assert weights and all(f.endswith(".safetensors") for f in weights), weights
    assert "transformer/diffusion_pytorch_model.safetensors" in weights and "model_index.json" in lf
    # the tiny base stores float32 safetensors: its unchanged components are linked, never the trained ones
    assert {"text_encoder", "vae", "tokenizer"} <= set(ll) and not {"transformer", "scheduler"} & set(ll)
    assert cl == [], "--copy leaves no link"
    copied_card, linked_card = (tmp_path / "copied" / "README.md").read_text(), (tmp_path / "linked" / "README.md").read_text()
    assert "tokenizer (copied)" in copied_card and "symlink" not in copied_card
    assert "tokenizer (linked)" in linked_card and "Linked ones were symlinks" in linked_card
    # the exported transformer holds the checkpoint's weights
    trained = load_file(os.path.join(copied, "transformer", "diffusion_pytorch_model.safetensors"))
    raw = load_checkpoint(ckpt).trainable
    assert raw and all(torch.equal(trained[k], v.float()) for k, v in raw.items() if k in trained)
    assert sum(k in trained for k in raw) == len(raw)
    # what --copy is for: the base moves away; the copied export still loads, the linked one cannot
    shutil.move(config.model, config.model + "-moved")
    try:
        pipe = DiffusionPipeline.from_pretrained(copied)
        assert pipe.transformer is not None and pipe.text_encoder is not None
        with pytest.raises(Exception):  # noqa: B017 - diffusers' error for a dangling folder varies
            DiffusionPipeline.from_pretrained(linked)
    finally:
        shutil.move(config.model + "-moved", config.model)


def test_choices_that_do_not_fit_are_refused(sd3_full, tmp_path):
    root, config, ckpt = sd3_full
    res = _cli("--checkpoint", ckpt, "--step", "last", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "--step picks a checkpoint of RUN_ID" in res.output
    lora = make_checkpoint(make_config("toy", 4, ""), str(tmp_path / "lora"))
    res = _cli("--checkpoint", lora, "--copy", "--out", str(tmp_path / "o"))
    assert res.exit_code != 0 and "drop --copy or use --format pipeline" in res.output
    assert sorted(os.listdir(tmp_path)) == ["lora"]


def test_a_failure_removes_the_parent_folders_it_created(sd3_full, tmp_path, monkeypatch):
    from grpo_guard.export import build

    _, _, ckpt = sd3_full

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "write_pipeline", boom)
    res = _cli("--checkpoint", ckpt, "--out", str(tmp_path / "new" / "deeper" / "out"))
    assert res.exit_code != 0
    assert os.listdir(tmp_path) == [], "nothing is left behind, not even the folders made for --out"
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    res = _cli("--checkpoint", ckpt, "--out", str(tmp_path / "file" / "out"))
    assert res.exit_code != 0 and "is not a directory" in res.output

"""A checkpoint write on a full disk: one sentence saying where, how much is free and about how
much is needed; no partial file left; the previous checkpoint intact and loadable, so the run can
resume once space is freed."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple

import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.training import checkpoint as C

Usage = namedtuple("Usage", "total used free")


def _ckpt(step: int, numel: int = 250_000) -> C.Checkpoint:
    return C.Checkpoint(step=step, config=RunConfig.from_dict({"epochs": 4}), trainable={"w": torch.ones(numel)},
                        ema=[torch.ones(numel)], optimizer=None, trainer={"last_ckpt_step": step})


def _short_write(message: str):
    def save(obj, path):  # what torch's zip writer does when the disk fills: a partial file, then an error
        with open(path, "wb") as fh:
            fh.write(b"PK" + b"\0" * 1000)
        raise RuntimeError(message)
    return save


@pytest.mark.parametrize("failure", ["torch", "enospc"])
def test_a_full_disk_names_the_space_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    first = C.save_checkpoint(str(tmp_path), _ckpt(1))
    if failure == "torch":
        monkeypatch.setattr(C.torch, "save", _short_write(
            "[enforce fail at inline_container.cc:672] . unexpected pos 2912000 vs 2911888"))
        monkeypatch.setattr(C.shutil, "disk_usage", lambda _p: Usage(10**9, 10**9 - 300_000, 300_000))
    else:
        def no_space(obj, path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        monkeypatch.setattr(C.torch, "save", no_space)
    with pytest.raises(C.DiskFullError) as e:
        C.save_checkpoint(str(tmp_path), _ckpt(2))
    msg = str(e.value)
    assert msg.startswith("no space left on /") and "checkpoint of step 2" in msg and "about 2.0 MB needed" in msg, msg
    if failure == "torch":
        assert "0.3 MB free" in msg, msg
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000001.json", "ckpt_000001.pt"], "a partial file was left behind"
    assert C.load_checkpoint(first).step == 1 and C.list_checkpoints(str(tmp_path))[-1][0] == 1


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(C.torch, "save", _short_write("some other writer failure"))
    with pytest.raises(RuntimeError, match="some other writer failure"):
        C.save_checkpoint(str(tmp_path), _ckpt(1))
    assert os.listdir(tmp_path) == []


def test_a_real_small_tmpfs_fills_up(tmp_path):
    """The same on a real 1 MB tmpfs (needs mount rights: root here; skipped where CI has none)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no root or no mount rights)")
    try:
        first = C.save_checkpoint(str(mnt), _ckpt(1, numel=50_000))  # 0.4 MB
        with pytest.raises(C.DiskFullError, match=f"no space left on {mnt} writing the checkpoint of step 2"):
            C.save_checkpoint(str(mnt), _ckpt(2, numel=100_000))  # 0.8 MB: does not fit beside it
        assert C.load_checkpoint(first).step == 1
        assert sorted(os.listdir(mnt)) == ["ckpt_000001.json", "ckpt_000001.pt"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

"""Checkpoints: a step-numbered ``.pt`` file plus a JSON sidecar holding the full RunConfig.

Layout in the run's checkpoint directory (``Recorder.checkpoint_dir()``)::

    ckpt_000040.pt     trainable weights, EMA, optimizer, trainer state (loaded weights-only)
    ckpt_000040.json   {"format", "step", "config": RunConfig, "meta": {...}}

Everything a resume needs is in the ``.pt`` (like nanoGPT's checkpoint): the sampling and
shuffling generators are derived from (seed, epoch, ...), so no RNG state is stored. Files are
written to a temporary name and renamed, so a crash never leaves a half-written checkpoint
behind a valid name. A file that cannot be read raises ``CheckpointError`` with one sentence.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch

from grpo_guard.config import ConfigError, RunConfig

FORMAT = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")

# Fields that fix the shape of the trainable weights: on resume they come from the checkpoint.
ARCHITECTURE_KEYS = ("backbone", "model", "resolution", "lora_rank", "lora_alpha", "lora_targets")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not a GRPO-Guard checkpoint."""


class DiskFullError(CheckpointError, OSError):
    """A checkpoint could not be written for lack of space; the message says where, how much
    was free and about how much was needed. The previous checkpoint is untouched."""

    plain_message = True  # the worker stores the message as is, without the class name


@dataclass
class Checkpoint:
    step: int
    config: RunConfig
    trainable: dict[str, torch.Tensor]
    ema: list[torch.Tensor] | None
    optimizer: dict[str, Any] | None
    trainer: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    filled: list[str] = field(default_factory=list)  # config keys the file lacked (defaults used)


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt_{step:06d}.pt")


def sidecar_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def save_checkpoint(directory: str, ckpt: Checkpoint, meta: dict[str, Any] | None = None) -> str:
    """Write ``ckpt`` as ``ckpt_<step>.pt`` + ``.json`` (atomically); returns the ``.pt`` path.

    Both files are written under temporary names and renamed only once both are complete, so a
    failed write (a full disk) leaves every earlier checkpoint as it was and no partial file
    behind; a full disk raises :class:`DiskFullError` naming the free and the needed space."""
    os.makedirs(directory, exist_ok=True)
    path = checkpoint_path(directory, ckpt.step)
    blob = {"format": FORMAT, "step": ckpt.step, "config": ckpt.config.to_json(),
            "config_fields_set": sorted(ckpt.config.fields_set()), "trainable": ckpt.trainable, "ema": ckpt.ema,
            "optimizer": ckpt.optimizer, "trainer": ckpt.trainer}
    side = {"format": FORMAT, "step": ckpt.step, "config": ckpt.config.to_dict(), "meta": meta or {}}
    tmp, side_tmp = path + ".tmp", sidecar_path(path) + ".tmp"
    try:
        torch.save(blob, tmp)
        with open(side_tmp, "w", encoding="utf-8") as fh:
            json.dump(side, fh, indent=1, sort_keys=True)
    except (OSError, RuntimeError) as e:  # torch reports a short write as a RuntimeError of its zip writer
        for p in (tmp, side_tmp):
            with contextlib.suppress(OSError):
                os.remove(p)
        needed = _nbytes(blob)
        free = _free_bytes(directory)
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed * 1.1):
            free_text = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
            raise DiskFullError(
                f"no space left on {_mount_point(directory)} writing the checkpoint of step {ckpt.step}: "
                f"{free_text}, about {needed / 1e6:.1f} MB needed. The previous checkpoint is intact: free "
                "some space and resume the run") from None
        raise
    os.replace(tmp, path)
    os.replace(side_tmp, sidecar_path(path))
    ckpt.path = path
    return path


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (dicts, lists), what a checkpoint of it takes on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 64


def _free_bytes(directory: str) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _mount_point(directory: str) -> str:
    """The mount point holding ``directory`` (what a user frees space on)."""
    path = os.path.realpath(directory)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def resolve_checkpoint(path: str) -> str:
    """A ``.pt`` file, its ``.json`` sidecar, or a directory (its latest checkpoint)."""
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint (ckpt_*.pt) found in directory {path}.")
        return found[-1][1]
    if path.endswith(".json"):
        path = os.path.splitext(path)[0] + ".pt"
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass a ckpt_*.pt file or the directory holding it.")
    return path


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (weights-only unpickling)."""
    path = resolve_checkpoint(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, wrong format, foreign pickle ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}); it is truncated, corrupt or not a "
            "GRPO-Guard checkpoint — resume from another ckpt_*.pt in the same directory.") from None
    if not isinstance(blob, dict) or "trainable" not in blob or "config" not in blob:
        raise CheckpointError(f"checkpoint {path} is not a GRPO-Guard checkpoint (it lacks the trainable weights or the config).")
    try:
        raw = json.loads(blob["config"])
        config = RunConfig.from_dict(raw)
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {e}".replace("\n", "; ")) from None
    fields_set = blob.get("config_fields_set")
    if isinstance(fields_set, list):
        # The JSON holds every field; without this, all would count as set by the user, and
        # FLUX would switch from the pipeline's resolution-dependent shift to a static one.
        config = RunConfig.model_construct(_fields_set={str(k) for k in fields_set} & set(RunConfig.model_fields),
                                           **{k: getattr(config, k) for k in RunConfig.model_fields})
    return Checkpoint(step=int(blob.get("step", 0)), config=config, trainable=blob["trainable"],
                      ema=blob.get("ema"), optimizer=blob.get("optimizer"),
                      trainer=dict(blob.get("trainer") or {}), path=path,
                      filled=sorted(set(RunConfig.model_fields) - set(raw)))


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint in ``directory``, by step."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            out.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(out)


def prune_checkpoints(directory: str, keep: int, protect: set[int] = frozenset()) -> list[int]:
    """Delete all but the latest ``keep`` checkpoints, never those whose step is in ``protect``
    (the best-gold one). Returns the deleted steps."""
    found = list_checkpoints(directory)
    latest = {s for s, _ in found[-keep:]} if keep > 0 else set()
    removed = []
    for step, path in found:
        if step in latest or step in protect:
            continue
        for p in (path, sidecar_path(path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        removed.append(step)
    return removed


WEIGHTS = ("auto", "ema", "raw")


def chosen_weights(ckpt: Checkpoint, weights: str = "auto") -> str:
    """``"ema"`` or ``"raw"``: which weights of ``ckpt`` to use. ``auto`` takes the EMA when the
    run kept one (what evaluation sampled), else the raw weights; asking for an EMA the
    checkpoint lacks raises ``CheckpointError``."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "auto":
        return "ema" if ckpt.ema is not None else "raw"
    if weights == "ema" and ckpt.ema is None:
        raise CheckpointError(f"checkpoint {ckpt.path} keeps no EMA weights (the run had ema: false); "
                              "use the raw weights instead.")
    return weights


def apply_checkpoint(backbone: Any, ckpt: Checkpoint, weights: str = "auto") -> str:
    """Give ``backbone`` (a freshly built base model) the trained weights of ``ckpt``: the same
    LoRA adapter (or full fine-tuning) as the run, then its raw or EMA weights. Returns which
    weights were used (``"ema"`` / ``"raw"``). A checkpoint that does not fit raises
    ``ValueError``."""
    which = chosen_weights(ckpt, weights)
    arch = ckpt.config
    backbone.add_lora(arch.lora_rank, arch.lora_alpha, arch.lora_targets)
    backbone.load_trainable_state_dict(ckpt.trainable)
    if which == "ema":
        params = backbone.trainable_parameters()
        if len(params) != len(ckpt.ema):
            raise ValueError(f"the checkpoint's EMA holds {len(ckpt.ema)} tensors, the model has {len(params)} "
                             "trainable parameters")
        with torch.no_grad():
            for p, s in zip(params, ckpt.ema, strict=True):
                p.copy_(s)
    return which

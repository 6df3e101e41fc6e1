"""Resolve ``model:`` (a local directory or a hub id) to a local directory, checking that the
files a backbone or reward needs are there, before anything is loaded onto a device. The one
place for this: the SD3, FLUX and toy backbones (:func:`resolve_pipeline`,
:func:`check_pipeline_dir`, :func:`check_pipeline_class`) and the model rewards
(:func:`resolve_model_dir`) all go through it.

Every failure is one ``ModelNotFoundError`` sentence that says what was looked for, where, and
how to fix it (DESIGN.md: "a missing model gives one clear sentence"). Imports no torch.

Rules:
- An existing local path is used as is; nothing is downloaded.
- Anything else must look like a hub id (``org/name``). It is resolved from the local HF cache
  when ``HF_HUB_OFFLINE`` is set (read at call time) or ``allow_download=False``; otherwise it is
  downloaded with ``huggingface_hub.snapshot_download`` (the user configured a hub id, so the
  network is allowed, DESIGN.md "Rules of the house"). For a pipeline only ``model_index.json``
  and the component folders are fetched, never the single-file checkpoints some repositories
  also keep at their root (FLUX.1-dev's 23 GB ``flux1-dev.safetensors``).
- ``required`` entries are paths relative to the model directory. An entry may use glob
  wildcards and ``|`` for alternatives: ``"transformer/*.safetensors|transformer/*.bin"``.
- When ``model_index.json`` is required, every component it lists is checked too: a network
  needs ``config.json`` and weights, a scheduler ``scheduler_config.json``, a tokenizer files.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from collections.abc import Iterator

from grpo_guard.models.base import ModelNotFoundError

# The files a diffusers pipeline directory must hold to be loadable (weights included); the
# components listed in model_index.json are checked as well.
PIPELINE_REQUIRED = ("model_index.json", "transformer/config.json", "transformer/*.safetensors|transformer/*.bin")
# A transformers model directory (CLIP, BLIP, ...).
HF_MODEL_REQUIRED = ("config.json", "*.safetensors|*.bin")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.ckpt", "*.safetensors.index.json", "*.bin.index.json")


def missing_files(directory: str, required: tuple[str, ...] | list[str]) -> list[str]:
    """The entries of ``required`` with no match under ``directory`` (see module docstring),
    then the incomplete components of ``model_index.json`` if it is required and present."""
    missing = []
    for entry in required:
        alternatives = entry.split("|")
        if not any(glob.glob(os.path.join(glob.escape(directory), alt)) for alt in alternatives):
            missing.append(entry.replace("|", " or "))
    if "model_index.json" in required and "model_index.json" not in missing:
        missing += [m for m in _missing_components(directory) if m not in missing]
    return missing


def _missing_components(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, "model_index.json"), encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError):
        return ["a readable model_index.json"]
    missing = []
    for name, spec in index.items() if isinstance(index, dict) else ():
        if name.startswith("_") or not isinstance(spec, list) or not spec or spec[0] is None:
            continue
        sub = os.path.join(directory, name)
        have = os.listdir(sub) if os.path.isdir(sub) else []
        if not have:
            missing.append(f"{name}/")
        elif "scheduler" in name:
            if "scheduler_config.json" not in have:
                missing.append(f"{name}/scheduler_config.json")
        elif "tokenizer" in name or "processor" in name or "feature_extractor" in name:
            continue
        elif "config.json" not in have:
            missing.append(f"{name}/config.json")
        elif not any(glob.glob(os.path.join(glob.escape(sub), w)) for w in _WEIGHTS):
            missing.append(f"{name}/ weights (*.safetensors or *.bin)")
    return missing


def resolve_model_dir(model: str | None, required: tuple[str, ...] | list[str] = PIPELINE_REQUIRED, *,
                      what: str = "model", setting: str = "model", allow_download: bool = True,
                      revision: str | None = None, fix: str | None = None) -> str:
    """Return a local directory holding ``model`` with every ``required`` file.

    Args:
        model (`str`): local directory, or a hub id such as ``black-forest-labs/FLUX.1-dev``.
        required (`tuple[str, ...]`, default `PIPELINE_REQUIRED`): relative paths that must exist;
            globs and ``a|b`` alternatives allowed.
        what (`str`, default ``"model"``): how the thing is named in the error sentence.
        setting (`str`, default ``"model"``): the config key or variable a user changes to fix it.
        allow_download (`bool`, default `True`): if False, a hub id is looked up in the HF cache only.
        revision (`str`, optional): hub revision.
        fix (`str`, optional): the fix a missing or incomplete local directory's sentence ends
            with (default: set `setting` to a directory that holds the first required file).

    Raises:
        ModelNotFoundError: with one sentence naming what was looked for, where, and the fix.
    """
    if not model or not str(model).strip():
        raise ModelNotFoundError(
            f"No {what} was given: set `{setting}` to a local directory or a hub id.")
    model = os.path.expanduser(str(model).strip())
    if os.path.exists(model) or os.path.isabs(model) or model.startswith(".") or not _HUB_ID.match(model):
        return _check_local(model, required, what, setting, fix=fix)

    offline = hub_offline() or not allow_download
    # A pipeline: the component folders only (see the module docstring).
    patterns = ["model_index.json", "*/*"] if "model_index.json" in required else None
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(model, revision=revision, local_files_only=offline, allow_patterns=patterns)
    except Exception as e:  # noqa: BLE001 - every hub failure becomes the same clear sentence
        from huggingface_hub import constants

        cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
        if offline:
            why = ("HF_HUB_OFFLINE is set" if hub_offline() else "downloads are off for this lookup")
            raise ModelNotFoundError(
                f"The {what} {model!r} is neither a local directory nor in the local Hugging Face cache "
                f"({cache}), and {why}; "
                f"download it once with `hf download {model}` on a machine with network, "
                f"or set `{setting}` to a local directory that holds it.") from None
        raise ModelNotFoundError(
            f"Could not download the {what} {model!r} from the Hugging Face hub "
            f"({type(e).__name__}: {_first_line(e)}); check the id, your network and your token "
            f"(gated models need `hf auth login`), or set `{setting}` to a local directory.") from None
    return _check_local(path, required, what, setting, hub_id=model, fix=fix)


def _check_local(path: str, required, what: str, setting: str, hub_id: str | None = None,
                 fix: str | None = None) -> str:
    shown = f"{hub_id!r} (cached at {path})" if hub_id else repr(path)
    if not os.path.exists(path):
        raise ModelNotFoundError(
            f"The {what} directory {path!r} does not exist; "
            + (fix or f"set `{setting}` to a directory that holds {required[0]!s} or to a hub id such as org/name")
            + ".")
    if not os.path.isdir(path):
        raise ModelNotFoundError(
            f"The {what} path {path!r} is a file, not a directory; set `{setting}` to the directory "
            f"that holds {required[0]!s}.")
    missing = missing_files(path, required)
    if missing:
        raise ModelNotFoundError(
            f"The {what} at {shown} is incomplete: missing {', '.join(missing)}; re-download or "
            f"re-save the full model there (e.g. `pipe.save_pretrained(dir)`), or "
            + (fix or f"set `{setting}` to a complete copy") + ".")
    return os.path.abspath(path)


# ---- diffusers pipelines (the SD3, FLUX and toy backbones) ------------------------------------

def resolve_pipeline(model: str | None, *, what: str = "pipeline", fix: str | None = None) -> str:
    """A local directory holding the complete diffusers pipeline ``model`` (a directory or a hub
    id, see :func:`resolve_model_dir`). Checks files only; nothing is loaded."""
    return resolve_model_dir(model, PIPELINE_REQUIRED, what=what, fix=fix)


def check_pipeline_dir(path: str, *, what: str = "diffusers pipeline", fix: str | None = None) -> None:
    """Raise ``ModelNotFoundError`` unless ``path`` holds a complete ``save_pretrained`` layout:
    ``model_index.json`` plus, per listed component, a config and (for networks) weight files."""
    _check_local(path, PIPELINE_REQUIRED, what, "model", fix=fix)


def check_pipeline_class(path: str, expected: str) -> None:
    """Raise ``ValueError`` when the pipeline at ``path`` is another class than ``expected`` (an
    SD3 directory given to the FLUX backbone, say)."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return  # a hub id that from_pretrained resolves itself
    with open(index, encoding="utf-8") as fh:
        found = json.load(fh).get("_class_name")
    if found and found != expected:
        raise ValueError(f"{path} holds a {found}, not a {expected}; choose the matching backbone")


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-component progress bars while loading (they flood worker logs)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was_d, was_t = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_d:
            dlog.enable_progress_bar()
        if was_t:
            tlog.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else "no details"

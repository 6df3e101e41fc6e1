"""One export, start to finish: checks first (nothing is loaded before the request is known to
be possible), then the model is built and written into a temporary directory beside ``out``
that is renamed to ``out`` at the end. A failure removes the temporary directory: nothing is
left behind, and an existing ``out`` is replaced only with ``force`` (and only once the new
one is complete).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from grpo_guard.export.facts import Chosen, ExportError

FORMATS = ("lora", "pipeline")
GRID_NAME = "eval_samples.png"
GRID_MAX = 16


@dataclass
class ExportResult:
    out: str
    format: str
    weights: str
    step: int
    files: list[str] = field(default_factory=list)


def check_out(out: str, force: bool) -> str:
    """The absolute ``out``; refuses an existing one without ``force``, and a parent that
    cannot be written."""
    if not out or not str(out).strip():
        raise ExportError("--out must name the directory to write the export to.")
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out) and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it, or choose another --out.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"{out} is a file, not a directory; choose another --out.")
    parent = os.path.dirname(out)
    existing = parent
    while not os.path.isdir(existing):  # created only when the export starts (and removed if it fails)
        if os.path.lexists(existing):
            raise ExportError(f"{existing} is not a directory; choose another --out.")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"{existing} is not writable; choose another --out.")
    return out


def _make_parent(out: str) -> list[str]:
    """Create ``out``'s missing parent directories; returns them, deepest first (what a failed
    export removes again, so that it leaves nothing behind)."""
    made, d = [], os.path.dirname(out)
    while not os.path.isdir(d):
        made.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
    except OSError as e:
        _remove_empty(made)
        raise ExportError(f"cannot create {os.path.dirname(out)} ({e.strerror or type(e).__name__}); "
                          "choose another --out.") from None
    return made


def _remove_empty(dirs: list[str]) -> None:
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def grid_png(samples: list[tuple[str, int, str]], path: str, limit: int = GRID_MAX) -> tuple[int, str]:
    """Tile up to ``limit`` eval images (prompt order) into one PNG; returns (count, caption)."""
    from PIL import Image

    images, names = [], []
    for prompt, seed, file in sorted(samples)[:limit]:
        try:
            with Image.open(file) as im:
                images.append(im.convert("RGB"))
        except (OSError, ValueError):
            continue
        names.append(f"{prompt!r} seed {seed}")
    if not images:
        return 0, ""
    w, h = images[0].size
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im.resize((w, h)), ((i % cols) * w, (i // cols) * h))
    sheet.save(path, format="PNG")
    caption = ("Eval samples at this step, row by row: " + "; ".join(names)
               + (f" (first {limit} of {len(samples)})" if len(samples) > limit else "") + ".")
    return len(images), caption


def export(chosen: Chosen, out: str, *, fmt: str | None = None, weights: str = "auto", force: bool = False,
           copy: bool = False, device: str = "cpu", load_from: str | None = None,
           progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export the checkpoint ``chosen`` to the directory ``out`` (see the module docstring).

    ``fmt`` None: ``lora`` for a LoRA run, ``pipeline`` for a full fine-tuning run. ``weights``:
    auto / ema / raw. ``load_from``: what the card's snippet loads (default ``out``; a hub repo id
    when the export is pushed). Raises ``ExportError`` with one sentence."""
    say = progress or (lambda _msg: None)
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"--format must be lora or pipeline, got {fmt!r}.")
    out = check_out(out, force)
    from grpo_guard.models.base import ModelNotFoundError
    from grpo_guard.training.checkpoint import CheckpointError, chosen_weights, load_checkpoint

    say(f"reading checkpoint {chosen.path}")
    try:
        ckpt = load_checkpoint(chosen.path)
        which = chosen_weights(ckpt, weights)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    except ValueError as e:
        raise ExportError(f"--weights: {e}.") from None
    config = ckpt.config
    fmt = fmt or ("lora" if config.lora_rank else "pipeline")
    if fmt == "lora" and not config.lora_rank:
        raise ExportError("this run fine-tuned the whole transformer (lora_rank 0), so it has no LoRA to export; "
                          "use --format pipeline.")
    if copy and fmt == "lora":
        raise ExportError("--copy copies the base model's components into a pipeline export, and a LoRA export "
                          "holds none; drop --copy or use --format pipeline.")
    from grpo_guard.export.build import base_pipeline_dir

    try:
        base_pipeline_dir(config)  # a moved or deleted base model fails here, before anything is written
    except ModelNotFoundError as e:
        raise ExportError(str(e).rstrip(".") + ".") from None

    made = _make_parent(out)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    except OSError as e:
        _remove_empty(made)
        raise ExportError(f"cannot write into {os.path.dirname(out)} ({e.strerror or type(e).__name__}); "
                          "choose another --out.") from None
    try:
        result = _build(chosen, ckpt, tmp, out, fmt=fmt, weights=which, copy=copy, device=device,
                        load_from=load_from or out, say=say)
        say(f"moving the export into place at {out}")
        _share(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
    say("done")
    return result


def _build(chosen: Chosen, ckpt, tmp: str, out: str, *, fmt: str, weights: str, copy: bool, device: str,
           load_from: str, say: Callable[[str], None]) -> ExportResult:
    from grpo_guard.config import RunConfig
    from grpo_guard.export import build
    from grpo_guard.export.card import CardFacts, render

    say(f"loading the base model and applying the {weights} weights")
    try:
        model = build.load_trained(ckpt, weights, device=device)
    except ValueError as e:
        raise ExportError(f"checkpoint {ckpt.path} does not fit its base model: {e}") from None
    bb = model.backbone
    components: dict[str, str] = {}
    if fmt == "lora":
        say("writing the LoRA weights")
        build.write_lora(model, tmp)
        base = model.base_dir
    else:
        say("writing the pipeline (trained transformer, then the base's other components)")
        components = build.write_pipeline(model, tmp, copy=copy, progress=say)
        base = model.base_dir
    grid, caption = None, ""
    if chosen.samples:
        n, caption = grid_png(chosen.samples, os.path.join(tmp, GRID_NAME))
        grid = GRID_NAME if n else None
    prompt, seed = (sorted(chosen.samples)[0][:2] if chosen.samples else (_first_eval_prompt(ckpt.config), 0))
    config = ckpt.config
    if chosen.run_config:
        with contextlib.suppress(Exception):  # the store's copy of the config, as the card must match the store
            config = RunConfig.from_dict(chosen.run_config)
    facts = CardFacts(
        config=config, step=chosen.step if chosen.step >= 0 else ckpt.step, step_reason=chosen.reason,
        weights=weights, format=fmt, load_from=load_from, base_model=_base_ref(ckpt.config, base),
        run_id=chosen.run_id, run_name=chosen.run_name, eval_at_step=dict(chosen.eval_at_step),
        eval_at_base=dict(chosen.eval_at_base), alarm_onset=chosen.alarm_onset, prompt=str(prompt), seed=int(seed),
        max_sequence_length=int(bb.max_sequence_length), scheduler_overrides=build.scheduler_overrides(model),
        latent_shape=tuple(bb.latent_shape(ckpt.config.resolution)), license=_license(ckpt.config, base),
        grid=grid, grid_caption=caption, components=components, trained_epochs=chosen.trained_epochs,
        run_status=chosen.run_status, history=chosen.history, has_ema=ckpt.ema is not None)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(render(facts))
    files = sorted(os.listdir(tmp))
    return ExportResult(out=out, format=fmt, weights=weights, step=facts.step, files=files)


def _share(root: str) -> None:
    """Ordinary permissions (mkdtemp and some writers create 0700 / 0600): what the umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for here, dirs, files in os.walk(root):
        for d in dirs:
            if not os.path.islink(os.path.join(here, d)):
                os.chmod(os.path.join(here, d), 0o777 & ~mask)
        for f in files:
            if not os.path.islink(os.path.join(here, f)):
                os.chmod(os.path.join(here, f), 0o666 & ~mask)


def _replace(tmp: str, out: str) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (``--force``) is moved aside first and
    deleted only once the new one is in place."""
    old = None
    if os.path.lexists(out):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "x"))
    try:
        os.rename(tmp, out)
    except OSError:
        if old:
            os.rename(os.path.join(old, "x"), out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _base_ref(config, base_dir: str) -> str:
    """How the snippet names the base model: the hub id the run used, else the local directory."""
    from grpo_guard.export.card import CardFacts

    probe = CardFacts(config=config, step=0, step_reason="", weights="", format="", load_from="", base_model="")
    return probe.hub_base or base_dir


def _license(config, base_dir: str) -> str | None:
    """The base's license: the toy is this project's (Apache-2.0); otherwise the ``license:`` of
    a README.md front matter in the base directory, when there is one."""
    if config.backbone == "toy" and not config.model:
        return "apache-2.0"
    try:
        with open(os.path.join(base_dir, "README.md"), encoding="utf-8") as fh:
            text = fh.read(20000)
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    import yaml

    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    lic = meta.get("license") if isinstance(meta, dict) else None
    return str(lic) if lic else None


def _first_eval_prompt(config) -> str:
    try:
        from grpo_guard.prompts.catalog import resolve_prompts

        prompts = resolve_prompts(config.eval_prompts, field="eval_prompts")
        return str(prompts[0]) if prompts else "a photo"
    except Exception:  # noqa: BLE001 - a prompt set that no longer resolves still exports
        return "a photo"


def zip_folder(folder: str, path: str) -> str:
    """``folder`` as one zip file at ``path`` (written beside it and renamed): the files of linked
    components are stored as files, under the folder's name."""
    import zipfile

    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".zip-", dir=os.path.dirname(path))
    os.close(fd)
    top = os.path.basename(os.path.normpath(folder))
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for here, dirs, files in os.walk(folder, followlinks=True):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(here, name)
                    zf.write(full, os.path.join(top, os.path.relpath(full, folder)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportError(f"cannot write the zip file {path} ({e.strerror or type(e).__name__}); the export "
                          f"itself is complete at {folder}.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def folder_files(folder: str) -> list[tuple[str, str]]:
    """(path in the repo, file on disk) for every file of ``folder``, linked components followed
    (``upload_folder`` would skip them: its ``glob("**/*")`` does not enter symlinked folders)."""
    out = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(here, name)
            out.append((os.path.relpath(full, folder).replace(os.sep, "/"), full))
    return out


def push_to_hub(folder: str, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload ``folder`` to the hub model repo ``repo_id`` (created if needed) in one commit; the
    token comes from the environment (``HF_TOKEN``) or the local login unless given. Returns the
    repo URL. Linked components are uploaded as the files they point to."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=full) for rel, full in folder_files(folder)]
        api.create_commit(repo_id, operations=ops, commit_message="Upload GRPO-Guard export", repo_type="model")
    except Exception as e:  # noqa: BLE001 - network, auth and naming errors: one sentence
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExportError(f"the upload to the hub repo {repo_id} failed ({type(e).__name__}: {first}); the export "
                          f"is complete at {folder}, so retry with `hf upload {repo_id} {folder}`.") from None
    return str(url)

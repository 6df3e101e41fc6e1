"""The artifact store: eval images and checkpoints, addressed by *location* strings.

A location is a relative POSIX path such as ``runs/12/samples/000040/1_3f2a9c01d2e4.png``. Rows
in SQL hold locations, never absolute paths, so the directory (``GG_ARTIFACTS``) can move, be a
shared volume, or be replaced by an object store implementing the same few functions.

``resolve`` refuses anything that could leave the root: absolute paths, ``..`` segments, and
symlinks whose target lies outside it. Write failures (full disk, read-only volume, permissions)
come out as ``ArtifactError`` with one sentence naming the path and the cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile

from grpo_guard.store.db import artifacts_root


class ArtifactError(OSError):
    """The artifact store could not be written or read."""


def resolve(location: str, root: str | None = None) -> str:
    """The absolute path of ``location`` under the artifact root.

    Raises ValueError for an empty or absolute location, a ``..`` segment, or a path that
    (after following symlinks) leaves the root.
    """
    if not isinstance(location, str) or not location.strip():
        raise ValueError("an artifact location must be a non-empty relative path")
    if "\x00" in location:
        raise ValueError("an artifact location must not contain NUL bytes")
    loc = location.replace("\\", "/")
    if loc.startswith("/") or os.path.isabs(location) or (len(loc) > 1 and loc[1] == ":"):
        raise ValueError(f"artifact location {location!r} is absolute; locations are relative to the artifact root")
    if any(part == ".." for part in loc.split("/")):
        raise ValueError(f"artifact location {location!r} contains '..'")
    base = os.path.realpath(root or artifacts_root())
    path = os.path.realpath(os.path.join(base, *[p for p in loc.split("/") if p not in ("", ".")]))
    if path != base and not path.startswith(base + os.sep):
        raise ValueError(f"artifact location {location!r} resolves outside the artifact root")
    return path


def to_location(path: str, root: str | None = None) -> str:
    """The location of an absolute ``path`` inside the root (ValueError if outside)."""
    base = os.path.realpath(root or artifacts_root())
    full = os.path.realpath(path)
    if full != base and not full.startswith(base + os.sep):
        raise ValueError(f"{path} is outside the artifact root {base}")
    return os.path.relpath(full, base).replace(os.sep, "/")


def run_prefix(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def sample_location(run_id: int, step: int, prompt: str, seed: int) -> str:
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]
    return f"{run_prefix(run_id)}/samples/{int(step):06d}/{int(seed)}_{digest}.png"


def checkpoint_location(run_id: int) -> str:
    return f"{run_prefix(run_id)}/checkpoints"


def _write_error(what: str, path: str, e: OSError) -> ArtifactError:
    cause = e.strerror or type(e).__name__
    return ArtifactError(e.errno, f"cannot write {what} to the artifact store at {path}: {cause} "
                                  f"(artifact root {artifacts_root()}, set by GG_ARTIFACTS)")


def ensure_dir(location: str, *, what: str = "a directory") -> str:
    """Create the directory ``location`` (and parents); return its path."""
    path = resolve(location)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise _write_error(what, path, e) from e
    return path


def put_bytes(location: str, data: bytes, *, what: str = "a file") -> str:
    """Write ``data`` at ``location`` atomically (temp file + rename); return the path."""
    path = resolve(location)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise _write_error(what, path, e) from e
    return path


def delete(location: str) -> None:
    """Remove a file or a directory tree; a missing one is fine."""
    path = resolve(location)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


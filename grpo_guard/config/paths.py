"""Where a config may point: the rules for every file path a run config names.

Imports no torch (the app uses it). A path in a config (``prompts: file:PATH`` and the like)
is read by whoever runs the config, with that process's permissions, and what it reads can end
up in rows every UI user sees. So a path must resolve, symlinks followed, to a regular file
inside an allowed root:

- the directory of the config file itself (the CLI; a stored config has none),
- each directory of ``GG_PROMPTS_DIR`` (separated by ``os.pathsep``),
- the built-in prompt-set directories (:data:`BUILTIN_ROOTS`).

Never under ``/proc``, ``/sys`` or ``/dev``, never a FIFO, socket, device or directory, never a
symlink that leaves its root, and at most :data:`MAX_FILE_BYTES` / :data:`MAX_FILE_LINES`.
Relative paths are looked up in the roots in that order. Where the files are not visible (the
New-run form runs beside the workers, not with them) :func:`spec_problem` judges the text alone:
no ``..``, no hidden parts, no ``~``, absolute paths only inside a root.
"""

from __future__ import annotations

import os
import stat

from grpo_guard.config.errors import ConfigError

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_FILE_LINES = 100_000
FORBIDDEN = ("/proc", "/sys", "/dev")
# Directories of prompt files shipped with the package; the prompt-set registry adds its own.
BUILTIN_ROOTS: list[str] = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "prompts")]


def _error(field: str, message: str) -> Exception:
    return ConfigError([(field, message)])


def allowed_roots(config_dir: str | None = None) -> list[str]:
    """The directories a config may name files in, in lookup order (absolute, deduplicated)."""
    roots = [config_dir] if config_dir else []
    roots += [p.strip() for p in os.environ.get("GG_PROMPTS_DIR", "").split(os.pathsep) if p.strip()]
    roots += BUILTIN_ROOTS
    out: list[str] = []
    for r in roots:
        a = os.path.abspath(os.path.expanduser(r))
        if a not in out:
            out.append(a)
    return out


def _roots_text(roots: list[str]) -> str:
    return ", ".join(roots) if roots else "none"


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _forbidden(path: str) -> bool:
    return any(_inside(path, f) for f in FORBIDDEN)


def spec_problem(field: str, raw: str, *, config_dir: str | None = None) -> str | None:
    """Why the path text ``raw`` may not be named by a config, judged without the filesystem;
    else None."""
    p = raw.strip()
    roots = allowed_roots(config_dir)
    if not p:
        return "names no file"
    if any(ord(c) < 32 or c == "\x7f" for c in p):  # NUL cuts a path short in C; none is ever meant
        return f"{p[:200]!r} contains control characters"
    parts = p.replace("\\", "/").split("/")
    if p.startswith("~") or any(x == ".." or (x.startswith(".") and x != ".") for x in parts):
        return (f"{p[:200]!r} is refused: paths with '..', '~' or hidden parts are refused; "
                f"name a file under the allowed roots ({_roots_text(roots)})")
    if os.path.isabs(p):
        norm = os.path.normpath(p)
        if _forbidden(norm) or not any(_inside(norm, r) for r in roots):
            return (f"{p[:200]!r} is outside the allowed roots ({_roots_text(roots)}); "
                    "put the file under one of them or add its directory to GG_PROMPTS_DIR")
    return None


def confine(field: str, raw: str, *, config_dir: str | None = None) -> str:
    """The real path of the regular file ``raw`` names inside an allowed root; ConfigError
    naming ``field`` and the roots otherwise."""
    real = find(field, raw, config_dir=config_dir)
    if real is None:
        raise _error(field, f"no file {raw.strip()[:200]!r} under the allowed roots "
                            f"({_roots_text(allowed_roots(config_dir))}); put it under one of them or add "
                            "its directory to GG_PROMPTS_DIR")
    return real


def find(field: str, raw: str, *, config_dir: str | None = None) -> str | None:
    """Like :func:`confine`, but None when no root holds the file (it may exist only where
    the workers run); a refused path still raises."""
    why = spec_problem(field, raw, config_dir=config_dir)
    if why:
        raise _error(field, why)
    p = raw.strip()
    roots = allowed_roots(config_dir)
    pairs = ([(os.path.normpath(p), r) for r in roots if _inside(os.path.normpath(p), r)] if os.path.isabs(p)
             else [(os.path.join(r, p), r) for r in roots])
    for cand, root in pairs:
        if not os.path.lexists(cand):
            continue
        real, real_root = os.path.realpath(cand), os.path.realpath(root)
        if _forbidden(real) or not _inside(real, real_root):
            raise _error(field, f"{p[:200]!r} resolves outside its root {root} (a symlink out of the allowed "
                                f"roots: {_roots_text(roots)})")
        try:
            st = os.stat(real)
        except OSError as e:
            raise _error(field, f"cannot read {p[:200]!r}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _error(field, f"{p[:200]!r} is not a regular file (FIFOs, sockets, devices and "
                                "directories are refused)")
        if st.st_size > MAX_FILE_BYTES:
            raise _error(field, f"{p[:200]!r} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
        return real
    return None


def read_text(field: str, path: str, *, what: str = "prompt file") -> str:
    """The text of the file ``path``: a regular file (opened without blocking, so a FIFO
    swapped in after :func:`confine` cannot hang the reader), at most MAX_FILE_BYTES and
    MAX_FILE_LINES, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise _error(field, f"cannot read {what} {path}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _error(field, f"{what} {path} is not a regular file (FIFOs, sockets, devices and directories "
                                "are refused)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise _error(field, f"cannot read {what} {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise _error(field, f"{what} {path} is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(field, f"{what} {path} is not UTF-8 text") from None
    lines = text.count("\n") + 1
    if lines > MAX_FILE_LINES:
        raise _error(field, f"{what} {path} has {lines} lines, more than the {MAX_FILE_LINES} allowed")
    return text

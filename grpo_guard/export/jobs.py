"""Export jobs started from the web app: ``grpo-guard export`` in a subprocess, watched by a
thread of the app process, writing into the artifact store. Imports no torch (the app uses it).

Why a subprocess and no table: the app must not import torch, and the GPU workers' queues hold
training runs for hours (prefetch 1), so an export sent to them would wait behind a run. The
job's truth is its files, under ``runs/<id>/exports/``:

- ``<name>.json``: what was asked, the status (running / done / failed), the latest progress
  line, the error sentence, the pid and host of the subprocess;
- ``<name>/``: the export folder; it appears complete or not at all (built beside and renamed);
- ``<name>.zip``: the folder as one download (written by the subprocess with ``--zip``).

A job whose subprocess is gone without a zip (the app restarted mid-export and the export
failed, or the machine rebooted) shows as ``interrupted``; a finished zip always shows as
``done``. Deleting the run deletes its exports with the rest of ``runs/<id>/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpo_guard.export.facts import ExportError, parse_step
from grpo_guard.store import artifacts

_NAME = re.compile(r"^[\w.-]+$")


@dataclass(frozen=True)
class ExportJob:
    run_id: int
    name: str
    status: str  # running / done / failed / interrupted
    step: str
    weights: str
    format: str
    progress: str
    error: str
    started_at: float
    finished_at: float | None
    zip_path: str | None  # the download, once done


def exports_location(run_id: int) -> str:
    return f"{artifacts.run_prefix(run_id)}/exports"


def _job_path(run_id: int, name: str) -> str:
    return artifacts.resolve(f"{exports_location(run_id)}/{name}.json")


def _write(path: str, data: dict[str, Any]) -> None:
    """Atomically (temp file + rename), at the path fixed when the job started."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise artifacts.ArtifactError(e.errno, f"cannot write the export job's status to {path}: "
                                               f"{e.strerror or type(e).__name__}") from e


def _alive(data: dict[str, Any]) -> bool:
    if data.get("host") != socket.gethostname() or not data.get("pid"):
        return data.get("host") != socket.gethostname()  # another machine's job: trust its file
    try:
        os.kill(int(data["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_exports(run_id: int) -> list[ExportJob]:
    """The run's export jobs, newest first."""
    try:
        folder = artifacts.resolve(exports_location(run_id))
        names = os.listdir(folder)
    except (OSError, ValueError):
        return []
    jobs = []
    for fname in names:
        if not fname.endswith(".json") or fname.startswith(".") or not _NAME.match(fname[:-5]):
            continue
        name = fname[:-5]
        try:
            with open(os.path.join(folder, fname), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        zip_path = os.path.join(folder, f"{name}.zip")
        status = data.get("status", "running")
        if os.path.isfile(zip_path) and status != "failed":
            status = "done"
        elif status == "running" and not _alive(data):
            status = "interrupted"
        jobs.append(ExportJob(run_id=int(run_id), name=name, status=status, step=str(data.get("step", "")),
                              weights=str(data.get("weights", "")), format=str(data.get("format") or "auto"),
                              progress=str(data.get("progress", "")), error=str(data.get("error", "")),
                              started_at=float(data.get("started_at", 0.0)),
                              finished_at=data.get("finished_at"),
                              zip_path=zip_path if status == "done" else None))
    return sorted(jobs, key=lambda j: j.started_at, reverse=True)


def start_export(run_id: int, *, step: str = "best", weights: str = "auto", fmt: str | None = None,
                 popen: Callable[..., Any] = subprocess.Popen) -> ExportJob:
    """Start ``grpo-guard export RUN_ID`` for the app; returns at once. Bad choices and a run
    that is already exporting raise ``ExportError`` with one sentence."""
    parsed = parse_step(step)
    if weights not in ("auto", "ema", "raw"):
        raise ExportError(f"weights must be auto, ema or raw, got {weights!r}.")
    if fmt not in (None, "lora", "pipeline"):
        raise ExportError(f"format must be lora or pipeline, got {fmt!r}.")
    from grpo_guard.export.facts import from_store

    from_store(run_id, parsed)  # an unknown run or a pruned step is refused now, in one sentence
    if any(j.status == "running" for j in list_exports(run_id)):
        raise ExportError(f"run {run_id} is already exporting; wait for that export to finish.")
    name = time.strftime("%Y%m%d-%H%M%S") + f"-step-{parsed}-{fmt or 'auto'}-{weights}"
    assert _NAME.match(name)
    folder = artifacts.ensure_dir(exports_location(run_id), what="the run's exports")
    out, zip_path, job_path = (os.path.join(folder, name), os.path.join(folder, f"{name}.zip"),
                               os.path.join(folder, f"{name}.json"))
    data: dict[str, Any] = {"run_id": int(run_id), "step": str(parsed), "weights": weights, "format": fmt,
                            "status": "running", "progress": "starting", "error": "", "started_at": time.time(),
                            "finished_at": None, "host": socket.gethostname(), "pid": None}
    _write(job_path, data)
    cmd = [sys.executable, "-m", "grpo_guard.cli", "export", str(int(run_id)), "--step", str(parsed),
           "--weights", weights, "--out", out, "--zip", zip_path, "--card-path", name] + (["--format", fmt] if fmt else [])
    try:
        proc = popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    except OSError as e:
        data.update(status="failed", error=f"could not start the export ({e.strerror or type(e).__name__}).",
                    finished_at=time.time())
        _write(job_path, data)
        return next(j for j in list_exports(run_id) if j.name == name)
    data["pid"] = getattr(proc, "pid", None)
    _write(job_path, data)
    threading.Thread(target=_watch, args=(proc, job_path, data), name=f"gg-export-{run_id}", daemon=True).start()
    return next(j for j in list_exports(run_id) if j.name == name)


def _watch(proc: Any, job_path: str, data: dict[str, Any]) -> None:
    """Tail the subprocess's stderr into the job file; record how it ended."""
    last_error, tail = "", ""
    for line in proc.stderr:
        line = line.strip()
        if line.startswith("export: "):
            data["progress"] = line[len("export: "):]
            with contextlib.suppress(OSError):
                _write(job_path, data)
        elif line.startswith("Error: "):
            last_error = line[len("Error: "):]
        elif line:
            tail = line[:500]  # an unexpected traceback ends with the exception's line
    rc = proc.wait()
    data["finished_at"] = time.time()
    if rc == 0:
        data.update(status="done", progress="done")
    else:
        data.update(status="failed", error=last_error or tail or f"the export process exited with status {rc}.")
    with contextlib.suppress(OSError):
        _write(job_path, data)

"""Ctrl-C on `grpo-guard serve` with the toy A/B pair running (issue 24: exit within 10 s, both
runs ``interrupted`` with a checkpoint): a fresh data directory (embedded broker and workers,
SQLite), the pair enqueued as the Runs page's "Start the toy A/B pair" does it, and once both
arms have recorded ``--min-step`` epochs, SIGINT to serve's process group (what a terminal's
Ctrl-C sends; the workers are in their own sessions). Reports, from the signal: when each run's
pool child and each worker process ended, when serve exited, the runs' statuses, and the load.

    python benchmarks/ui/bench_serve_stop.py [--reps 3] [--min-step 1] [--repo PATH]

``--repo`` runs another checkout's serve (e.g. an export of main, for a before/after on the
same machine and load).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def once(repo: str, min_step: int) -> dict:
    data = tempfile.mkdtemp(prefix="gg-serve-stop-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GG_") and k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=repo, GG_DATA_DIR=data, HF_HUB_OFFLINE="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(data, "serve.out"), "w")  # noqa: SIM115 (closed below)
    serve = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port)], env=env,
                             cwd=repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start; see {log.name}") from None
                time.sleep(0.3)
        subprocess.run([sys.executable, "-c", "from app.pages.runs import start_toy_pair; start_toy_pair()"],
                       env=env, cwd=repo, check=True, capture_output=True)
        os.environ["GG_DATA_DIR"] = data
        sys.path.insert(0, repo)
        from grpo_guard.store import queries

        ids = [r.id for r in queries.list_runs(limit=10)]
        deadline = time.monotonic() + 900
        while not all(queries.get_run(i).step >= min_step for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the toy pair did not reach --min-step")
            time.sleep(0.2)
        workers = _children(serve.pid)
        watched = {p: "worker" for p in workers} | {c: "run child" for w in workers for c in _children(w)}
        ended: dict[int, float] = {}
        load_before = _load()
        t0 = time.monotonic()

        def watch() -> None:
            while len(ended) < len(watched):
                for p in watched:
                    if p not in ended and _ended(p):
                        ended[p] = time.monotonic() - t0
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(timeout=120)
        exit_s = time.monotonic() - t0
        time.sleep(0.1)
        return {"exit_s": exit_s, "rc": serve.returncode, "load": load_before,
                "ended": sorted((round(t, 2), watched[p]) for p, t in ended.items()),
                "runs": [(i, queries.get_run(i).status, queries.get_run(i).step) for i in ids]}
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--min-step", type=int, default=1)
    ap.add_argument("--repo", default=ROOT)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    repo = os.path.abspath(args.repo)
    if args.one:
        print(once(repo, args.min_step), flush=True)
        return
    for _ in range(args.reps):  # each in a fresh process: the store module binds one data dir
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", "--repo", repo,
                              "--min-step", str(args.min_step)], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()

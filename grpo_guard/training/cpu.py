"""How a training process shares the CPU: torch threads no more than the cores this process
owns, and OpenMP threads that sleep while they wait wherever the thread governor cannot act.

Measured (benchmarks/trainer/README.md, "CPU shared"): torch 2.13's CPU wheel runs its intra-op
threads on GNU libgomp (``torch/lib/libgomp.so.1``; MKL on its GNU threading layer), whose idle
threads spin for up to ~300,000 iterations before sleeping. On a quiet machine that is free; beside
one busy process the spinning threads take the CPU from the thread that has work, and a toy epoch
became 3× slower. Two answers, measured against each other:

- the thread governor (:mod:`grpo_guard.training.threads`): torch's thread count follows the CPU
  the other processes leave free, so beside a competitor one thread runs with no barrier to
  wait at. It keeps the quiet speed and halves the busy epoch. It is the default.
- ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once): about as fast beside a competitor, but a
  quiet epoch up to 12–30 % slower (thousands of futex wake-ups per second). It is set only where the
  governor does not act on a CPU run: the user fixed ``OMP_NUM_THREADS`` above 1, or turned the
  governor off (``GG_THREAD_GOVERNOR=0``).

libgomp reads these variables once, when torch loads it (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``;
Intel OpenMP's ``KMP_BLOCKTIME`` does not apply), so they must be in the environment *before*
torch is imported: the ``grpo-guard`` entry point sets them in its own environment (inherited by
its children: workers, serve's embedded workers, ``accelerate launch`` ranks), and
``worker.cli.spawn_worker`` in every worker's.

Not set by default, measured: a fixed glibc mmap threshold (``MALLOC_MMAP_THRESHOLD_=1048576``)
cuts a toy epoch's peak RSS from 1.6 to 1.2 GB (no dynamic raising, so freed activations go back to
the system), but every large tensor is then mapped and faulted in afresh: the quiet epoch took
~2x as long (benchmarks/trainer/README.md). A user who needs the memory can set it.

A value the user set is never overridden. ``GG_CPU_TUNING=0`` turns it off (the benchmark's
"before" arm: the behaviour before this module existed).

Imports no torch (it runs before torch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

SWITCH = "GG_CPU_TUNING"
# Set beside OMP_NUM_THREADS when that came from a CPU quota (not from the user), so the thread
# governor (training/threads.py) knows the count is a ceiling it may work under, not a choice.
THREADS_FROM_QUOTA = "GG_OMP_NUM_THREADS_FROM_QUOTA"

# name -> value, set where the user set nothing and the thread governor will not act.
DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
GOVERNOR_SWITCH = "GG_THREAD_GOVERNOR"  # read by training/threads.py; here: is the governor off?
# Variables that, when the user set any of them, mean they chose the OpenMP waiting themselves.
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def enabled(env: Mapping[str, str] | None = None, *, switch: str = SWITCH) -> bool:
    """False when ``switch`` (default ``GG_CPU_TUNING``) is 0/false/off/no (the settings are left out)."""
    env = os.environ if env is None else env
    return env.get(switch, "").strip().lower() not in ("0", "false", "off", "no")


def owned_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota
    (``cpu.max``, e.g. ``docker run --cpus 2`` on a 64-core host, where the mask shows 64)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    try:
        with open(path, encoding="ascii") as fh:
            limit, period = fh.read().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    try:
        return int(limit) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def governor_allowed(env: Mapping[str, str] | None = None) -> bool:
    """Whether the thread governor (training/threads.py) may set the thread count: CPU tuning and
    ``GG_THREAD_GOVERNOR`` on, and no ``OMP_NUM_THREADS`` the user fixed (a CPU quota's count,
    marked by ``THREADS_FROM_QUOTA``, is a ceiling it works under)."""
    env = os.environ if env is None else env
    threads = env.get("OMP_NUM_THREADS", "").strip()
    fixed = bool(threads) and threads != env.get(THREADS_FROM_QUOTA, "").strip()
    return enabled(env) and enabled(env, switch=GOVERNOR_SWITCH) and not fixed


def training_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's environment) with the defaults added wherever
    the user set nothing, for a training process about to be started. With a CPU quota below the
    affinity mask, ``OMP_NUM_THREADS`` (unless set) becomes the quota: torch would otherwise start
    a thread per visible core."""
    out = dict(os.environ if env is None else env)
    if not enabled(out):
        return out
    one_thread = out.get("OMP_NUM_THREADS", "").strip() == "1" and enabled(out, switch=GOVERNOR_SWITCH)
    # where the governor keeps the threads off a competitor's core (or one thread never waits),
    # libgomp's own waits keep the quiet speed
    defaults = {} if governor_allowed(out) or one_thread else DEFAULTS
    for name, value in defaults.items():
        if name in _WAIT_VARS and any(out.get(v, "").strip() for v in _WAIT_VARS):
            continue
        if not out.get(name, "").strip():
            out[name] = value
    if not out.get("OMP_NUM_THREADS", "").strip():
        cores = owned_cores()
        try:
            visible = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            visible = os.cpu_count() or 1
        if cores < visible:
            out["OMP_NUM_THREADS"] = out[THREADS_FROM_QUOTA] = str(cores)
    return out


def apply() -> dict[str, str]:
    """Put the defaults into this process's environment, so that libgomp reads them when torch is
    imported later and every child inherits them. Returns what was added. Call it before importing
    torch: afterwards they no longer reach this process (only its children)."""
    if not enabled():
        return {}
    added = {k: v for k, v in training_env().items() if os.environ.get(k) != v}
    os.environ.update(added)
    return added

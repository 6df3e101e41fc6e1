"""Torch threads that follow the CPU this run actually gets.

A toy run on 2 cores with 2 intra-op threads is fastest while the machine is quiet, and about 3×
slower as soon as one other busy process shares those cores: every parallel region ends in a
barrier, and the thread that lost its core to the competitor holds the other one at the barrier
(libgomp's threads spin while they wait, so the waiting burns the core too). Sleeping waits
(``OMP_WAIT_POLICY=PASSIVE``) take the spinning away but cost the quiet run its speed, and they
cannot be changed once torch has loaded libgomp.

:class:`ThreadGovernor` instead measures, about once a second, how much of the CPUs this process
may run on was used by *other* processes (``/proc/stat`` per CPU, minus this process's own CPU
time), and sets ``torch.set_num_threads`` to the cores left over: all of them on a quiet machine
(today's speed), fewer beside a competitor (one thread has no barrier to wait at), and all of them
again once the competitor is gone. It runs in the training thread (a forward pre-hook of the
trained module: every sampling step, every update chunk), because torch's OpenMP thread count
belongs to the thread that sets it. ``GG_THREAD_GOVERNOR=0`` (for runs that must repeat bit for
bit: a different thread count can change float rounding), ``GG_CPU_TUNING=0`` or an
``OMP_NUM_THREADS`` the user set turns it off; so does a CUDA device, where the CPU threads do little.

Measured in ``benchmarks/trainer/`` ("CPU shared").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from grpo_guard.training import cpu

log = logging.getLogger(__name__)

SWITCH = cpu.GOVERNOR_SWITCH
INTERVAL_S = 1.0  # long enough for /proc/stat's 10 ms ticks to be a 1 % error, short next to an epoch
# Other processes must take at least this much of a core before a thread is given up; a quarter
# core of background (a browser, a web server, a second idle worker) is no reason to halve speed.
MARGIN = 0.5


def choose_threads(maximum: int, cpus: int, others: float) -> int:
    """Threads for the next interval: the CPUs (of the ``cpus`` this process may use) that the
    other processes left free, rounded, between 1 and ``maximum``; ``others`` is their use in
    cores over the last interval."""
    free = cpus - max(0.0, others)
    return max(1, min(maximum, int(free + 1.0 - MARGIN)))  # others > MARGIN of a core: one thread less


def _read_cpu_ticks(cpus: frozenset[int], path: str = "/proc/stat") -> int | None:
    """Busy clock ticks (everything but idle and iowait) summed over ``cpus``, or None."""
    total = 0
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                if int(name[3:]) not in cpus:
                    continue
                vals = [int(v) for v in fields[:8]]
                total += sum(vals) - vals[3] - vals[4]  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        return None
    return total


class ThreadGovernor:
    """Sets torch's intra-op threads from the CPU other processes leave free (module docstring).

    ``read_ticks``, ``own_cpu`` and ``clock`` are injectable for tests; ``set_threads`` /
    ``get_threads`` default to torch's."""

    def __init__(self, *, cpus: frozenset[int] | None = None, maximum: int | None = None,
                 interval: float = INTERVAL_S, read_ticks: Callable[[], int | None] | None = None,
                 own_cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] | None = None, get_threads: Callable[[], int] | None = None,
                 hz: int | None = None) -> None:
        import torch

        self.cpus = cpus if cpus is not None else frozenset(os.sched_getaffinity(0))
        self._set = set_threads or torch.set_num_threads
        self._get = get_threads or torch.get_num_threads
        self.maximum = max(1, maximum if maximum is not None else self._get())
        self.interval = interval
        self._ticks = read_ticks or (lambda: _read_cpu_ticks(self.cpus))
        self._own, self._clock = own_cpu, clock
        self._hz = hz or os.sysconf("SC_CLK_TCK")
        self._last: tuple[float, int, float] | None = None
        self.threads = self._get()
        self.changes = 0

    def tick(self) -> int:
        """Look again if an interval has passed; returns the thread count now in force."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < self.interval:
            return self.threads
        ticks, own = self._ticks(), self._own()
        if ticks is None:
            return self.threads
        if self._last is not None:
            t0, ticks0, own0 = self._last
            wall = now - t0
            others = ((ticks - ticks0) / self._hz - (own - own0)) / wall
            want = choose_threads(self.maximum, len(self.cpus), others)
            if want != self.threads:
                log.info("torch threads %d -> %d: other processes use %.2f of this run's %d CPUs",
                         self.threads, want, others, len(self.cpus))
                self._set(want)
                self.threads = want
                self.changes += 1
        self._last = (now, ticks, own)
        return self.threads

    def attach(self, module) -> object:
        """Tick before every forward of ``module`` (in the thread that runs it); returns the hook
        handle (``.remove()`` detaches it)."""
        def hook(_module, _args) -> None:  # a value returned here would replace the forward's inputs
            self.tick()

        return module.register_forward_pre_hook(hook)


def governor_for(device: object) -> ThreadGovernor | None:
    """A governor for a run on ``device``, or None where it must not act: a CUDA device,
    ``GG_THREAD_GOVERNOR=0``, ``GG_CPU_TUNING=0``, a thread count the user fixed (``OMP_NUM_THREADS``), one torch thread, a
    system without ``/proc/stat``."""
    if "cuda" in str(device) or not cpu.governor_allowed():
        return None
    try:
        gov = ThreadGovernor()
    except (AttributeError, OSError, ValueError):
        return None
    if gov.maximum < 2 or _read_cpu_ticks(gov.cpus) is None:
        return None
    return gov


def govern(module, device: object) -> ThreadGovernor | None:
    """Attach a governor (:func:`governor_for`) to ``module`` once: a worker that keeps a model
    loaded across runs reuses the one already attached instead of stacking hooks."""
    existing = getattr(module, "_gg_thread_governor", None)
    if existing is not None:
        return existing
    gov = governor_for(device)
    if gov is not None:
        gov.attach(module)
        module._gg_thread_governor = gov
    return gov


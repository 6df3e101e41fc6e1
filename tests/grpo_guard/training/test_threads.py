"""The thread governor: torch threads follow the CPU other processes leave free."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from grpo_guard.training import threads
from grpo_guard.training.threads import ThreadGovernor, _read_cpu_ticks, choose_threads, govern, governor_for


def test_choose_threads_gives_up_a_thread_only_for_more_than_half_a_core_of_others():
    assert choose_threads(2, 2, 0.0) == 2
    assert choose_threads(2, 2, 0.45) == 2  # background noise keeps both threads
    assert choose_threads(2, 2, 0.67) == 1  # a busy loop time-sliced against our 2 threads
    assert choose_threads(2, 2, 1.0) == 1
    assert choose_threads(2, 2, 5.0) == 1  # never below one
    assert choose_threads(8, 8, 3.2) == 5
    assert choose_threads(2, 64, 10.0) == 2  # a quota under a wide mask: the quota is the ceiling
    assert choose_threads(4, 4, -0.3) == 4  # tick rounding can make others slightly negative


class _Machine:
    """Fake /proc/stat and process clock: ``step(seconds, ours, others)`` advances them."""

    def __init__(self):
        self.t, self.ticks, self.own = 100.0, 0, 0.0
        self.set_calls: list[int] = []
        self.threads = 2

    def step(self, seconds: float, ours: float, others: float) -> None:
        self.t += seconds
        self.own += ours * seconds
        self.ticks += round((ours + others) * seconds * 100)

    def governor(self, **kw) -> ThreadGovernor:
        def set_threads(n: int) -> None:
            self.set_calls.append(n)
            self.threads = n

        return ThreadGovernor(cpus=frozenset({0, 1}), read_ticks=lambda: self.ticks, own_cpu=lambda: self.own,
                              clock=lambda: self.t, set_threads=set_threads, get_threads=lambda: self.threads,
                              hz=100, **kw)


def test_the_governor_drops_to_one_thread_beside_a_competitor_and_comes_back_when_it_leaves():
    m = _Machine()
    gov = m.governor()
    assert gov.tick() == 2  # first look: a baseline only
    m.step(1.0, ours=1.9, others=0.05)
    assert gov.tick() == 2 and m.set_calls == []
    m.step(1.0, ours=1.33, others=0.67)  # a busy loop arrives
    assert gov.tick() == 1 and m.set_calls == [1]
    m.step(1.0, ours=1.0, others=1.0)
    assert gov.tick() == 1 and m.set_calls == [1]  # no call when nothing changes
    m.step(1.0, ours=1.0, others=0.0)  # it left; we still use one core
    assert gov.tick() == 2 and m.set_calls == [1, 2] and gov.changes == 2


def test_the_governor_looks_at_most_once_an_interval():
    m = _Machine()
    gov = m.governor(interval=1.0)
    gov.tick()
    m.step(0.5, ours=1.0, others=1.0)
    assert gov.tick() == 2  # too soon: not measured
    m.step(0.6, ours=1.0, others=1.0)
    assert gov.tick() == 1


def test_an_unreadable_proc_stat_leaves_the_threads_alone():
    m = _Machine()
    gov = ThreadGovernor(cpus=frozenset({0, 1}), read_ticks=lambda: None, own_cpu=lambda: 0.0, clock=lambda: m.t,
                         set_threads=m.set_calls.append, get_threads=lambda: 2, hz=100)
    for _ in range(3):
        m.step(2.0, 0, 0)
        assert gov.tick() == 2
    assert m.set_calls == []


def test_proc_stat_counts_a_busy_child_on_our_cpus():
    """The real parser: the busy ticks of this process's CPUs grow by at least what a busy child
    spent (the child is one of the 'others' the governor sees)."""
    cpus = frozenset(os.sched_getaffinity(0))
    hz = os.sysconf("SC_CLK_TCK")
    before = _read_cpu_ticks(cpus)
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\nprint(time.process_time())"],
                             stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    after = _read_cpu_ticks(cpus)
    assert before is not None and after is not None
    assert (after - before) / hz >= float(out) - 0.05


def test_a_parsed_proc_stat_counts_only_the_given_cpus_and_not_idle(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 10 1 5 1000 7 2 3 4 0 0\n"
                    "cpu1 20 0 0 2000 0 0 0 0 0 0\n"
                    "intr 5\n")
    assert _read_cpu_ticks(frozenset({0}), str(stat)) == 10 + 1 + 5 + 2 + 3 + 4
    assert _read_cpu_ticks(frozenset({0, 1}), str(stat)) == 25 + 20
    assert _read_cpu_ticks(frozenset({0}), str(tmp_path / "missing")) is None


def test_governor_for_stays_out_where_it_must(monkeypatch):
    monkeypatch.delenv("GG_THREAD_GOVERNOR", raising=False)
    monkeypatch.delenv("GG_CPU_TUNING", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert governor_for("cuda:0") is None
    monkeypatch.setenv("GG_THREAD_GOVERNOR", "0")
    assert governor_for("cpu") is None
    monkeypatch.delenv("GG_THREAD_GOVERNOR")
    monkeypatch.setenv("GG_CPU_TUNING", "off")
    assert governor_for("cpu") is None
    monkeypatch.delenv("GG_CPU_TUNING")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice
    assert governor_for("cpu") is None
    monkeypatch.setenv(threads.cpu.THREADS_FROM_QUOTA, "2")  # a quota's ceiling: governed under it
    gov = governor_for("cpu")
    if len(os.sched_getaffinity(0)) >= 2 and torch.get_num_threads() >= 2:
        assert gov is not None and gov.maximum == torch.get_num_threads()


def test_govern_attaches_one_hook_that_ticks_on_every_forward(monkeypatch):
    monkeypatch.delenv("GG_THREAD_GOVERNOR", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    calls: list[int] = []
    fake = ThreadGovernor(cpus=frozenset({0, 1}), read_ticks=lambda: 0, own_cpu=lambda: 0.0, clock=time.monotonic,
                          set_threads=lambda n: None, get_threads=lambda: 2, hz=100)
    fake.tick = lambda: calls.append(1) or 2  # type: ignore[method-assign]
    monkeypatch.setattr(threads, "governor_for", lambda device: fake)
    module = torch.nn.Linear(2, 2)
    assert govern(module, "cpu") is fake and govern(module, "cpu") is fake  # a reused model: one hook
    module(torch.zeros(1, 2))
    module(torch.zeros(1, 2))
    assert calls == [1, 1]


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_no_governor_on_cuda(device, monkeypatch):
    monkeypatch.delenv("GG_THREAD_GOVERNOR", raising=False)
    assert governor_for(device) is None

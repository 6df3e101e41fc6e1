"""An experiment of 2 arms × 3 seeds + matched no-signal controls (12 runs) on the toy world,
through the queue with 2 real worker processes and the real trainer (SQLite, embedded broker),
then ``grpo-guard experiment report``: its numbers equal those computed here directly from the
stored runs' scalars, by hand (numpy and the t quantile), not through the report's own loader.

Tiny settings: 2 epochs of 2 prompts × 4 samples, 4 denoising steps, an eval of 2 images every
epoch (3 eval points per run), no EMA (so the evals see every update: the curves move)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import t as student_t

from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker.procs import REPO, workers, world_env

pytestmark = [pytest.mark.slow]

EXP = """
name: tiny study
base:
  backbone: toy
  epochs: 2
  group_size: 4
  prompts_per_epoch: 2
  num_steps: 4
  eval_every: 1
  eval_num_steps: 4
  eval_seeds: [0]
  checkpoint_every: 1
  lora_rank: 0
  learning_rate: 3.0e-4
  ema: false
  train_batch_size: 8
  rewards: {toy_fg_share: 1.0}
  eval_prompts: ['a red circle on a blue background', 'a green square on a white background']
arms:
  flow: {algorithm: flow_grpo}
  guard: {algorithm: grpo_guard}
seeds: [0, 1, 2]
controls: true
"""


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grpo_guard.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ}, timeout=timeout)


def _interval(values: list[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def _first_crossing(proxy: list[float], gold: list[float], level: float) -> float | None:
    if proxy[0] >= level:
        return gold[0]
    for i in range(1, len(proxy)):
        if proxy[i - 1] < level <= proxy[i]:
            return gold[i - 1] + (level - proxy[i - 1]) / (proxy[i] - proxy[i - 1]) * (gold[i] - gold[i - 1])
    return None


def test_two_arms_three_seeds_with_controls_through_two_workers_and_the_report(tmp_path, monkeypatch):
    with backend_env("sqlite", tmp_path) as url:
        env = world_env(url, str(tmp_path), "embedded", GG_TRAINER="", OMP_NUM_THREADS="1")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        path = tmp_path / "exp.yaml"
        path.write_text(EXP)
        with workers(env, ["w1", "w2"], str(tmp_path)) as ws:
            r = _cli("experiment", "submit", str(path), "--wait", "--timeout", "400", timeout=450)
            assert r.returncode == 0, r.stdout + r.stderr + "".join(w.log()[-3000:] for w in ws)
        eid = int(r.stdout.strip())
        members = queries.experiment_runs(eid)
        assert len(members) == 12 and {m.run.status for m in members} == {"succeeded"}
        assert len({m.run.worker_host for m in members}) >= 1
        assert queries.get_experiment(eid).progress == 1.0

        out = tmp_path / "report"
        rep = _cli("experiment", "report", str(eid), "--out", str(out), timeout=120)
        assert rep.returncode == 0, rep.stderr
        assert (out / "figure.png").stat().st_size > 10_000
        table = (out / "table.md").read_text()
        stats = json.loads((out / "stats.json").read_text())
        # the same numbers, straight from the stored scalars
        curves: dict[str, list[tuple[int, list[float], list[float]]]] = {}
        for m in members:
            s = queries.metric_series(m.run.id, ["eval/proxy", "eval/gold"], max_points=10**6)
            assert s["eval/proxy"][0] == s["eval/gold"][0] == [0, 1, 2]
            curves.setdefault(m.arm, []).append((m.seed, s["eval/proxy"][1], s["eval/gold"][1]))
    assert stats["arms"] == ["flow", "flow/control", "guard", "guard/control"]
    assert any(g[2] != g[0] for runs in curves.values() for _, _, g in runs), "training moved the gold"
    for arm, runs in curves.items():
        assert stats["gold"][arm]["steps"] == [0, 1, 2]
        for i in range(3):
            mean, half = _interval([g[i] for _, _, g in runs])
            got = stats["gold"][arm]["values"][i]
            assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["half"] == pytest.approx(half, abs=1e-12)
    mains = [r for a in ("flow", "guard") for r in curves[a]]
    start, top = max(p[0] for _, p, _ in mains), min(max(p) for _, p, _ in mains)
    levels = list(np.linspace(start, top, 6)[1:]) if top > start else []
    assert stats["levels"] == pytest.approx(levels, abs=1e-12)
    for arm in ("flow", "guard"):
        for k, lv in enumerate(levels):
            vals = [g for _, p, gold in curves[arm] if (g := _first_crossing(p, gold, lv)) is not None]
            assert stats["gold_at_proxy"][arm][k]["mean"] == pytest.approx(float(np.mean(vals)), abs=1e-12)
            assert f"{np.mean(vals):.4f}" in table
        control = {seed: gold for seed, _, gold in curves[f"{arm}/control"]}
        for i in range(3):
            mean, _ = _interval([gold[i] - control[seed][i] for seed, _, gold in curves[arm]])
            assert stats["beyond_noise_by_step"][arm]["values"][i]["mean"] == pytest.approx(mean, abs=1e-12)
        assert {a["method"] for a in stats["alarms"][arm]} == {"control"}
    assert "Gold lost beyond noise" in table and "Gold at equal eval proxy" in table


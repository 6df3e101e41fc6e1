"""The report of a stored experiment (``grpo-guard experiment report`` and the study's
``report.py --experiment``): its numbers are those computed by hand from the curves written to
the store, and the study's tables are rebuilt from the stored runs."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import t as student_t

from grpo_guard.cli import main
from tests.experiment_data import STEPS, curve, stored_experiment
from tests.storehelpers import backend_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    with backend_env("sqlite", tmp_path_factory.mktemp("report")):
        yield stored_experiment()


def _ci(values):
    x = np.asarray(values, dtype=float)
    return x.mean(), student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))


def test_the_report_numbers_are_those_of_the_stored_curves(experiment, tmp_path):
    r = CliRunner().invoke(main, ["experiment", "report", str(experiment), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    table = (tmp_path / "table.md").read_text()
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    for arm in ("flow", "guard", "flow/control"):
        for i, step in enumerate(STEPS):
            mean, half = _ci([curve(arm, s, i)[1] for s in range(3)])
            got = stats["gold"][arm]["values"][i]
            assert stats["gold"][arm]["steps"][i] == step
            assert got["mean"] == pytest.approx(mean) and got["half"] == pytest.approx(half)
    # equal proxy: guard's lowest peak is 0.54 (seed 0), every run starts at 0.30
    assert stats["levels"] == pytest.approx(list(np.linspace(0.30, 0.54, 6)[1:]))
    lv = stats["levels"][2]  # 0.444: flow seed s crosses it between i = 1 and 2
    by_hand = []
    for s in range(3):
        p = [curve("flow", s, i)[0] for i in range(4)]
        g = [curve("flow", s, i)[1] for i in range(4)]
        k = next(i for i in range(1, 4) if p[i - 1] < lv <= p[i])
        by_hand.append(g[k - 1] + (lv - p[k - 1]) / (p[k] - p[k - 1]) * (g[k] - g[k - 1]))
    assert stats["gold_at_proxy"]["flow"][2]["mean"] == pytest.approx(np.mean(by_hand))
    assert f"{np.mean(by_hand):.4f}" in table
    diffs = [curve("flow", s, 3)[1] - curve("flow/control", s, 3)[1] for s in range(3)]
    assert stats["beyond_noise_by_step"]["flow"]["values"][3]["mean"] == pytest.approx(np.mean(diffs))
    assert f"{np.mean(diffs):.3f}" in table
    assert all(a["method"] == "control" for a in stats["alarms"]["guard"])
    assert stats["ratios"]["guard"]["0"]["mean_minus_1"]["mean"] == pytest.approx(2e-6), "Guard clips r̂"
    assert stats["ratios"]["flow"]["2"]["mean_minus_1"]["mean"] == pytest.approx(3e-5)


def test_report_of_a_missing_experiment_is_one_sentence(experiment, tmp_path):
    r = CliRunner().invoke(main, ["experiment", "report", "999", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "no experiment with id 999" in r.stderr and "Traceback" not in r.output


def test_the_study_rebuilds_its_tables_from_stored_runs(experiment, tmp_path):
    study = os.path.join(ROOT, "benchmarks", "overoptimization")
    sys.path.insert(0, study)
    try:
        import report
    finally:
        sys.path.remove(study)
    arms, seeds, runs = report.store_runs([experiment])
    assert arms == ["flow", "flow_null", "guard", "guard_null"] and seeds == [0, 1, 2]
    assert runs["flow"][1]["gold"] == pytest.approx([curve("flow", 1, i)[1] for i in range(4)])
    table = report.report(arms, seeds, str(tmp_path), runs=runs)
    assert (tmp_path / "figure.png").exists() and "Gold beyond optimisation noise" in table
    gold_end = np.array([curve("flow", s, 3)[1] for s in range(3)])
    assert f"{gold_end.mean():.4f} ± {gold_end.std():.4f}" in table

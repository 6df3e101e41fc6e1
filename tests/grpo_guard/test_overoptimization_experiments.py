"""``benchmarks/overoptimization`` re-expressed as experiment files: every arm of every file is
exactly the run ``arms.py`` defines (its example config plus overrides), every control is the
study's no-signal control of that arm, and ``report.py`` builds its tables from stored runs."""

from __future__ import annotations

import glob
import os
import sys

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.experiments.config import ExperimentConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY = os.path.join(ROOT, "benchmarks", "overoptimization")
FILES = sorted(glob.glob(os.path.join(STUDY, "experiments", "*.yaml")))


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, STUDY)
    try:
        import arms
        import report

        yield arms, report
    finally:
        sys.path.remove(STUDY)


def _arm_config(arms, name: str) -> RunConfig:
    cfg, extra, _ = arms.ARMS[name]
    return RunConfig.from_file(os.path.join(ROOT, cfg), extra)


@pytest.mark.parametrize("path", [f for f in FILES if not f.endswith("base.yaml")], ids=os.path.basename)
def test_each_experiment_file_expands_to_the_studys_runs(study, path):
    arms, _ = study
    exp = ExperimentConfig.from_file(path)
    assert exp.seeds == [0, 1, 2]
    for run in exp.expand():
        base = run.arm.removesuffix("/control")
        want = _arm_config(arms, base).with_overrides({"seed": run.seed}).to_dict()
        got = run.config.to_dict()
        if not run.is_control:
            assert got == want, f"{run.arm}: differs in {[k for k in got if got[k] != want[k]]}"
            continue
        null = _arm_config(arms, arms.CONTROL_OF[base]).with_overrides({"seed": run.seed}).to_dict()
        assert {k for k in got if got[k] != null[k]} <= {"rewards"}, run.arm
        assert {k: w for k, w in got["rewards"].items() if w} == {k: w for k, w in null["rewards"].items() if w}


def test_the_experiment_files_cover_the_reported_arms(study):
    arms, _ = study
    names = {a for f in FILES if not f.endswith("base.yaml") for a in ExperimentConfig.from_file(f).arms}
    assert names >= {"flow_grpo", "grpo_guard", "grpo_guard_global_std", "flow_grpo_kl", "flow_grpo_group_std",
                     "grpo_guard_kl", "flow_grpo_big", "grpo_guard_big", "flow_grpo_classifier", "grpo_guard_classifier"}
    assert names <= set(arms.ARMS)

"""The Run page's charts and the metric catalogue (``grpo_guard.metrics``) agree: every key a
chart reads is catalogued under that chart, and every chart the catalogue names reads its keys."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("plotly")

from app import figures as F  # noqa: E402
from app.pages import run_detail as R  # noqa: E402
from grpo_guard import metrics as M  # noqa: E402
from tests.app import synthetic  # noqa: E402


class ReadSpy(dict):
    """A series map that remembers every key a figure looked up."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _series() -> dict:
    """Training scalars as the synthetic runs log them, plus eval keys (a GenEval breakdown among
    them) and the alarm."""
    rng = np.random.default_rng(0)
    rows = [synthetic.scalars("flow_grpo", s, 10, rng, 1e-4) for s in range(10)]
    out = {k: (list(range(10)), [r[k] for r in rows]) for k in rows[0]}
    evals = {M.EVAL_PROXY: [0.5, 0.6, 0.7], M.EVAL_GOLD: [0.5, 0.4, 0.3], "eval/toy_alignment": [0.5, 0.4, 0.3],
             M.GENEVAL_OVERALL: [0.2, 0.3, 0.3], M.GENEVAL_IMAGE_MEAN: [0.25, 0.3, 0.35],
             "eval/geneval/counting": [0.1, 0.2, 0.2], M.ALARM_ONSET: [np.nan, np.nan, 5.0]}
    out.update({k: ([0, 5, 9], v) for k, v in evals.items()})
    return out


def _reads_by_chart() -> dict[str, set[str]]:
    """The scalar keys each series chart of the Run page reads (the rewards chart also from a run
    that logged only the short ``reward/mean``)."""
    reads = {}
    spy = ReadSpy(_series())
    F.proxy_gold_figure(spy, onset=F.onset_of_run(spy), extra_gold=F.gold_keys(list(spy), None))
    reads[M.PROXY_GOLD_CHART] = set(spy.read)
    spy, short = ReadSpy(_series()), ReadSpy({M.REWARD_MEAN_SHORT: ([0, 1], [0.1, 0.2])})
    F.reward_figure(spy)
    F.reward_figure(short)
    reads[M.REWARDS_CHART] = spy.read | short.read
    spy = ReadSpy(_series())
    F.scalars_figure(spy, R.SCALAR_KEYS)
    reads[M.SCALARS_CHART] = set(spy.read)
    return reads


def test_every_key_a_chart_reads_is_catalogued_under_that_chart():
    """A chart reading a key nobody documents (or documents for another chart) is a typo or a
    metric that was renamed in one place only."""
    for chart, keys in _reads_by_chart().items():
        for key in keys:
            entry = M.scalar(key)
            assert entry is not None, f"chart {chart!r} reads {key!r}, which is not in grpo_guard.metrics"
            assert chart in entry.charts, f"chart {chart!r} reads {key!r} but its catalogue entry names {entry.charts}"
    for figure, stats in R.STAT_DEPS.items():
        for stat in stats:
            entry = M.step_stat(stat)
            assert entry is not None, f"figure {figure!r} reads step statistic {stat!r}, which is not catalogued"
            assert figure in entry.charts, f"figure {figure!r} reads {stat!r} but its entry names {entry.charts}"


def test_every_chart_the_catalogue_names_exists_and_reads_the_key():
    """The catalogue's "which chart shows it" must stay true when a chart changes."""
    reads = _reads_by_chart()
    for entry in M.SCALARS:
        for chart in entry.charts:
            assert chart in R.SERIES_FIGURES, f"{entry.key}: no series chart {chart!r} on the Run page"
            assert any(entry.matches(k) for k in reads[chart]), f"chart {chart!r} never reads {entry.key!r}"
    for entry in M.STEP_STATS:
        for chart in entry.charts:
            assert entry.key in R.STAT_DEPS.get(chart, ()), f"figure {chart!r} does not draw {entry.key!r}"


def test_figure_titles_name_catalogued_keys():
    """Titles keyed by metric name are dead entries once the key is renamed."""
    assert all(M.scalar(k) is not None for k in F.SCALAR_TITLES)
    assert all(M.step_stat(k) is not None for k in (*F.STAT_TITLES, *F.SIGNED_STATS))

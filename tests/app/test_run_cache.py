"""The Run page's cache of per-denoising-step matrices: every heatmap of a run shows the same
steps, the ones the store holds, during a run, when it ends and after a reload."""

from __future__ import annotations

import pytest

from app import run_cache
from app.pages import run_detail as R

RUN = 4242
N_J = 3


class FakeStore:
    """Just enough of ``grpo_guard.store.queries`` for ``run_detail.stat_figures``: every
    statistic of R.HEATMAPS, the clip stats and grad_norm_v is stored for steps 0..stored."""

    def __init__(self) -> None:
        self.stored = -1  # last step whose statistics rows exist
        self.stats = [*R.HEATMAPS, *R.CLIP_STATS, "grad_norm_v"]

    def metric_keys(self, run_id):
        return []

    def step_stats_keys(self, run_id):
        return list(self.stats) if self.stored >= 0 else []

    def step_stats_matrix(self, run_id, stat, max_steps=0):
        steps = list(range(self.stored + 1))
        return steps, list(range(N_J)), [[0.1 + s + j / 10 for j in range(N_J)] for s in steps]


def _heatmap_steps(q: FakeStore, last_step: int) -> dict[str, list[int]]:
    figs = R.stat_figures(q, RUN, last_step)
    return {name: [int(x) for x in fig.to_plotly().data[0].x] for name, (_, fig) in figs.items() if name in R.HEATMAPS}


@pytest.fixture()
def q():
    run_cache.forget(RUN)
    yield FakeStore()
    run_cache.forget(RUN)


def test_every_heatmap_covers_the_stored_steps_at_every_refresh_of_a_live_run(q):
    for step in range(10):
        q.stored = step
        got = _heatmap_steps(q, step)
        assert all(s == list(range(step + 1)) for s in got.values()), f"at step {step}: {got}"


def test_statistics_stored_after_their_step_was_seen_still_reach_the_heatmaps(q):
    """The scalars of step 9 may land (and move the cursor) a flush before its statistics;
    the refresh when the run finishes (same step, new status) must read them."""
    for step in range(9):
        q.stored = step
        _heatmap_steps(q, step)
    q.stored = 8
    assert all(s[-1] == 8 for s in _heatmap_steps(q, 9).values())
    q.stored = 9
    got = _heatmap_steps(q, 9)  # the finished run's last redraw, and every reload after it
    assert all(s == list(range(10)) for s in got.values()), got
    assert _heatmap_steps(q, 9) == got, "a reload shows the same steps"


class GrowingStore(FakeStore):
    """Scalars too, and key lists that grow with the run: eval keys at step 0, training keys
    from step 1 on (as the trainer logs them)."""

    def metric_keys(self, run_id):
        return ["eval/proxy"] + (["reward/total/mean"] if self.stored >= 1 else [])

    def step_stats_keys(self, run_id):
        return list(self.stats) if self.stored >= 1 else []

    def metric_series(self, run_id, keys, max_points=0, since_step=None):
        out = {}
        for k in keys:
            steps = [s for s in range(self.stored + 1) if (since_step is None or s > since_step)
                     and (k == "eval/proxy" or s >= 1)]
            out[k] = (steps, [0.5 + s for s in steps])
        return out


def test_the_first_training_step_is_drawn_when_it_lands_not_a_step_later(q):
    """A slow run's page redraws only when a step lands; keys read at step 0 (eval only) must
    not hide step 1's training curves and heatmaps on the redraw for step 1."""
    g = GrowingStore()
    g.stored = 0
    R.series_figures(g, RUN, {}, 0, True)
    R.stat_figures(g, RUN, 0)
    g.stored = 1
    figs = R.series_figures(g, RUN, {}, 1, True)
    names = {t["name"] for t in figs["rewards"].data}
    assert "total reward (mean)" in names, names
    heat = R.stat_figures(g, RUN, 1)["r_mean_minus_1"][1]
    assert [int(x) for x in heat.to_plotly().data[0].x] == [0, 1]

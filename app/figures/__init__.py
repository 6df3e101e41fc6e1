"""Pure functions: store query rows -> Plotly figures. No Gradio, no store, no torch.

Inputs are the plain shapes the store queries return:

- a *series map* ``{key: (steps, values)}`` (``queries.metric_series``), values may hold
  ``None``/NaN for missing points;
- a *stat matrix* ``(steps, js, matrix)`` (``queries.step_stats_matrix``): ``matrix[i][k]`` is
  the statistic at optimizer step ``steps[i]`` and denoising step ``js[k]``.

Every function returns a :class:`Fig` (``app.figures.base``) and never raises on missing keys
or empty data: it returns a figure with a "no data yet" annotation instead. Each carries a ``uirevision`` so a
refresh keeps the user's zoom (STACK.md PL3).

Speed: a ``Fig`` is the figure as plain dicts with numpy arrays, serialised straight to
Plotly's JSON (arrays as base64 typed arrays, STACK.md PL4). Building the same figures through
Plotly's object model (``go.Figure``, ``make_subplots``) validates every property and costs
10-50 ms a figure (measured), most of a 1 Hz refresh budget; ``Fig.to_plotly()`` gives the
validated ``go.Figure`` (the tests use it, so every figure is still checked against Plotly's
schema).

Modules: ``base`` (the Fig type and helpers), ``run`` (Run page), ``compare`` (Compare page);
everything public is re-exported here, so callers write ``from app import figures as F``.
"""

from app.figures.base import (  # noqa: F401
    ALARM_COLOR,
    GOLD_COLOR,
    GOLD_KEY,
    GUARD_SPREAD_TARGET,
    PALETTE,
    PROXY_COLOR,
    PROXY_KEY,
    Fig,
    Series,
    SeriesMap,
    empty_figure,
    is_empty,
)
from app.figures.compare import config_diff, gold_vs_proxy_figure, overlay_figure  # noqa: F401
from app.figures.run import (  # noqa: F401
    ALARM_KEY,
    REWARD_MEAN_KEYS,
    SCALAR_TITLES,
    SIGNED_STATS,
    STAT_TITLES,
    clip_by_sign_figure,
    gold_keys,
    grad_norm_figure,
    onset_of_run,
    over_optimization_onset,
    proxy_gold_figure,
    reward_figure,
    scalars_figure,
    stat_heatmap,
)

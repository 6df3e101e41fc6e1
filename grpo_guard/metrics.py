"""One catalogue of every metric key a run logs: its meaning, unit and the Run page chart that
draws it (ALGORITHM.md §8 is the source of the names).

Two kinds of key, as the store keeps them:
- run-level scalars (``Recorder.log_scalars``), one value per step (epoch; step 0 = base model);
- per-denoising-step statistics (``Recorder.log_step_stats``), one value per (step, j).

The trainer, ``update.py``, the CLI progress bar and the Run page name keys through the constants
below instead of string literals. A key with ``{name}`` is a pattern: one key per reward or gold
evaluator. Standard library only: the app imports this module and must not load torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Run page chart ids (``app.pages.run_detail.FIGURE_NAMES``).
PROXY_GOLD_CHART = "proxy_gold"
REWARDS_CHART = "rewards"
SCALARS_CHART = "scalars"
CLIP_CHART = "clip"
CLIP_HEAT_CHART = "clip_heat"
GRAD_CHART = "grad"

# Key families: every eval/* key comes from an evaluation, every reward/* key from the epoch's rewards.
EVAL_PREFIX = "eval/"
REWARD_PREFIX = "reward/"

# ---- run-level scalars: evaluation (rank 0, on the eval cadence) --------------------------------
EVAL_PROXY = "eval/proxy"
EVAL_GOLD = "eval/gold"
EVAL_GOLD_REL = "eval/gold_rel"
EVAL_REWARD = "eval/{name}"
EVAL_DETAIL = "eval/{name}/{detail}"  # a reward's breakdown (rewards.details): GenEval overall, per family
GENEVAL_OVERALL = "eval/geneval/overall"      # GenEval's Overall: mean of the six family accuracies
GENEVAL_IMAGE_MEAN = "eval/geneval/image_mean"  # share of images GenEval judges correct
ALARM_ONSET = "alarm/hacking_onset"
TIME_EVAL = "time/eval"

# ---- rewards and advantages of the epoch's samples ----------------------------------------------
REWARD_MEAN = "reward/{name}/mean"
REWARD_STD = "reward/{name}/std"
REWARD_TOTAL_MEAN = "reward/total/mean"
REWARD_TOTAL_STD = "reward/total/std"
REWARD_GROUP_STD = "reward/group_std/mean"
REWARD_MEAN_SHORT = "reward/mean"
REWARD_STD_SHORT = "reward/std"
REWARD_LATENCY = "reward/{name}/latency"     # reward servers only (grpo_guard.rewards.remote)
REWARD_FAILURES = "reward/{name}/failures"
ZERO_STD_RATIO = "zero_std_ratio"
ACTUAL_BATCH_SIZE = "actual_batch_size"
ADV_ABS_MEAN = "adv_abs_mean"
ADV_CLIPPED_FRAC = "adv_clipped_frac"

# ---- the policy update ----------------------------------------------------------------------------
POLICY_LOSS = "policy_loss"
LOSS = "loss"
KL = "kl"
GRAD_NORM = "grad_norm"
LR = "lr"
EMA_DECAY = "ema_decay"
OPTIMIZER_STEPS = "optimizer_steps"
OPTIMIZER_STEPS_EPOCH = "optimizer_steps_epoch"
MICRO_BATCHES = "micro_batches"
BACKWARD_ROWS = "backward_rows"
ONPOLICY_MAX_ABS_LOGR = "sanity/onpolicy_max_abs_logr"
RATIO_MEAN_MINUS_1 = "ratio/mean_minus_1"
RATIO_STD = "ratio/std"
RATIO_CLIP_FRAC = "ratio/clip_frac"

# ---- wall-clock time of the epoch's stages -----------------------------------------------------------
TIME_SAMPLE = "time/sample"
TIME_REWARD = "time/reward"
TIME_UPDATE = "time/update"
TIME_RECORD = "time/record"
TIME_EPOCH = "time/epoch"

# ---- per-denoising-step statistics (§8), from ``policy_loss`` stats and ``update.py`` -------------
LOGR_MEAN, LOGR_STD = "logr_mean", "logr_std"
R_MEAN_MINUS_1, R_STD = "r_mean_minus_1", "r_std"
LOGRHAT_MEAN, LOGRHAT_STD = "logrhat_mean", "logrhat_std"
RHAT_MEAN_MINUS_1, RHAT_STD = "rhat_mean_minus_1", "rhat_std"
BIAS, DRIFT_RMS = "bias", "drift_rms"
CLIP_HIGH, CLIP_LOW = "clip_high", "clip_low"
POS_ADV_CLIPPED, NEG_ADV_CLIPPED = "pos_adv_clipped", "neg_adv_clipped"
GRAD_ZEROED_FRAC = "grad_zeroed_frac"
APPROX_KL, KL_REF = "approx_kl", "kl_ref"
ADV_POS_FRAC, STEP_ADV_ABS_MEAN = "adv_pos_frac", "adv_abs_mean"
STEP_POLICY_LOSS, STEP_LOSS = "policy_loss", "loss"
DELTA_MEAN, DELTA, EFF_WEIGHT = "delta_mean", "delta", "eff_weight"
DT_ABS, S, STD_DEV_T, BETA = "dt_abs", "s", "std_dev_t", "beta"
GRAD_NORM_V = "grad_norm_v"
ROWS = "rows"


@dataclass(frozen=True)
class Metric:
    """One metric key (or ``{name}`` pattern): what it means, its unit, the Run page charts that
    draw it (empty: stored and listed on Compare only)."""

    key: str
    meaning: str
    unit: str
    charts: tuple[str, ...] = ()
    per_step: bool = False  # a per-denoising-step statistic (``log_step_stats``), not a run-level scalar

    def matches(self, key: str) -> bool:
        return key == self.key if "{" not in self.key else name_in(self.key, key) is not None


_FRAC = "fraction"
CATALOGUE: tuple[Metric, ...] = (
    # run-level scalars
    Metric(EVAL_PROXY, "weighted total of the proxy rewards on the fixed eval set (ODE sampling, EMA weights)",
           "reward", (PROXY_GOLD_CHART,)),
    Metric(EVAL_GOLD, "mean of the gold evaluators on the fixed eval set (NaN without gold)", "score",
           (PROXY_GOLD_CHART,)),
    Metric(EVAL_GOLD_REL, "eval/gold divided by its step-0 (base model) value", "ratio"),
    Metric(EVAL_REWARD, "one proxy reward or gold evaluator, mean over the eval set", "score", (PROXY_GOLD_CHART,)),
    Metric(GENEVAL_OVERALL, "GenEval's Overall (the paper's figure): the mean of the task families' strict "
           "accuracies on the eval set", "fraction", (PROXY_GOLD_CHART,)),
    Metric(GENEVAL_IMAGE_MEAN, "share of the eval images GenEval judges correct (a mean over images, not "
           "GenEval's Overall)", "fraction", (PROXY_GOLD_CHART,)),
    Metric(EVAL_DETAIL, "a breakdown a reward reports at eval (GenEval: accuracy per task family), mean over "
           "the eval images it applies to", "score", (PROXY_GOLD_CHART,)),
    Metric(ALARM_ONSET, "first eval step where gold falls while the proxy rises (§10), logged once", "step",
           (PROXY_GOLD_CHART,)),
    Metric(TIME_EVAL, "wall-clock time of one evaluation", "s"),
    Metric(REWARD_MEAN, "one proxy reward, mean over the epoch's samples", "reward", (REWARDS_CHART,)),
    Metric(REWARD_STD, "one proxy reward, std over the epoch's samples", "reward"),
    Metric(REWARD_TOTAL_MEAN, "total proxy reward Σ_k w_k·R_k, mean over the epoch's samples", "reward",
           (REWARDS_CHART,)),
    Metric(REWARD_TOTAL_STD, "total proxy reward, std over the epoch's samples", "reward", (REWARDS_CHART,)),
    Metric(REWARD_GROUP_STD, "within-group std of the total reward, mean over the groups", "reward"),
    Metric(REWARD_MEAN_SHORT, "short name of reward/total/mean some recorders write; read when that is absent",
           "reward", (REWARDS_CHART,)),
    Metric(REWARD_STD_SHORT, "short name of reward/total/std, read with reward/mean", "reward", (REWARDS_CHART,)),
    Metric(REWARD_LATENCY, "a reward server's mean round-trip time per request since the last step (the epoch's "
           "scoring and its eval); remote rewards only", "s"),
    Metric(REWARD_FAILURES, "a reward server's failed attempts since the last step (timeouts, 5xx, bad answers, "
           "retried); remote rewards only", "attempts"),
    Metric(ZERO_STD_RATIO, "share of groups whose rewards are all equal (zero advantage)", _FRAC, (REWARDS_CHART,)),
    Metric(ACTUAL_BATCH_SIZE, "samples with a non-zero advantage (kept for the update)", "samples"),
    Metric(ADV_ABS_MEAN, "mean |advantage| over the epoch's samples", "advantage", (REWARDS_CHART,)),
    Metric(ADV_CLIPPED_FRAC, "share of advantages clamped at ±adv_clip", _FRAC),
    Metric(POLICY_LOSS, "clipped-surrogate part of the loss, mean over the trained steps", "loss",
           (SCALARS_CHART,)),
    Metric(LOSS, "total loss (surrogate + β_KL·KL), mean over the trained steps", "loss"),
    Metric(KL, "KL to the reference model, mean over the trained steps (only with kl_beta > 0)", "nats",
           (SCALARS_CHART,)),
    Metric(GRAD_NORM, "gradient norm before clipping, mean over the epoch's optimizer steps", "norm",
           (SCALARS_CHART,)),
    Metric(LR, "learning rate", "1/step", (SCALARS_CHART,)),
    Metric(EMA_DECAY, "EMA decay of the eval weights (only with ema)", "ratio"),
    Metric(OPTIMIZER_STEPS, "optimizer steps since the start of the run", "steps"),
    Metric(OPTIMIZER_STEPS_EPOCH, "optimizer steps this epoch", "steps"),
    Metric(MICRO_BATCHES, "micro-batches this epoch (on this rank)", "batches"),
    Metric(BACKWARD_ROWS, "(sample, denoising step) rows through the backward pass this epoch", "rows"),
    Metric(ONPOLICY_MAX_ABS_LOGR, "max |log r| before the first optimizer step; fp32 noise when sampling and "
           "training agree (§8 sanity)", "nats"),
    Metric(RATIO_MEAN_MINUS_1, "mean − 1 of the ratio in use (r̂ with ratio_norm, else r), over the steps", "ratio"),
    Metric(RATIO_STD, "std of the ratio in use, mean over the steps", "ratio"),
    Metric(RATIO_CLIP_FRAC, "share of rows clipped (above 1+ε plus below 1−ε), mean over the steps", _FRAC),
    Metric(TIME_SAMPLE, "wall-clock time of sampling and decoding the epoch", "s"),
    Metric(TIME_REWARD, "wall-clock time of scoring the epoch", "s"),
    Metric(TIME_UPDATE, "wall-clock time of advantages and the policy update", "s"),
    Metric(TIME_RECORD, "wall-clock time of recording the epoch", "s"),
    Metric(TIME_EPOCH, "wall-clock time of the epoch (without eval and checkpoint)", "s"),
    # per-denoising-step statistics (§8)
    Metric(LOGR_MEAN, "raw log-ratio log r, mean", "nats", per_step=True),
    Metric(LOGR_STD, "raw log-ratio, std", "nats", per_step=True),
    Metric(R_MEAN_MINUS_1, "raw ratio r: mean − 1 (the left shift grows toward low noise)", "ratio",
           (R_MEAN_MINUS_1,), per_step=True),
    Metric(R_STD, "raw ratio r: std", "ratio", (R_STD,), per_step=True),
    Metric(LOGRHAT_MEAN, "RatioNorm log-ratio log r̂, mean", "nats", per_step=True),
    Metric(LOGRHAT_STD, "RatioNorm log-ratio, std", "nats", per_step=True),
    Metric(RHAT_MEAN_MINUS_1, "RatioNorm ratio r̂: mean − 1 (centred for Guard)", "ratio", (RHAT_MEAN_MINUS_1,),
           per_step=True),
    Metric(RHAT_STD, "RatioNorm ratio r̂: std", "ratio", (RHAT_STD,), per_step=True),
    Metric(BIAS, "mean (μ_θ − μ_old)²/(2s²): the predicted left shift, = per-element KL to the old policy", "nats",
           per_step=True),
    Metric(DRIFT_RMS, "√mean (μ_θ − μ_old)²: how far the policy moved", "latent units", per_step=True),
    Metric(CLIP_HIGH, "P(ratio > 1+ε)", _FRAC, per_step=True),
    Metric(CLIP_LOW, "P(ratio < 1−ε)", _FRAC, per_step=True),
    Metric(POS_ADV_CLIPPED, "P(A > 0 ∧ ratio > 1+ε): is the upper clip working", _FRAC,
           (CLIP_CHART, CLIP_HEAT_CHART), per_step=True),
    Metric(NEG_ADV_CLIPPED, "P(A < 0 ∧ ratio < 1−ε)", _FRAC, (CLIP_CHART,), per_step=True),
    Metric(GRAD_ZEROED_FRAC, "pos_adv_clipped + neg_adv_clipped: rows that give no gradient", _FRAC, per_step=True),
    Metric(APPROX_KL, "½·mean (log r)²", "nats", per_step=True),
    Metric(KL_REF, "KL to the reference model (§3.3, only with kl_beta > 0)", "nats", per_step=True),
    Metric(ADV_POS_FRAC, "share of rows with A > 0", _FRAC, per_step=True),
    Metric(STEP_ADV_ABS_MEAN, "mean |A| over the rows trained at j", "advantage", per_step=True),
    Metric(STEP_POLICY_LOSS, "clipped-surrogate loss at j", "loss", per_step=True),
    Metric(STEP_LOSS, "total loss at j", "loss", per_step=True),
    Metric(DELTA_MEAN, "mean gradient reweighting δ_j (Guard, §4.3)", "weight", per_step=True),
    Metric(DELTA, "the step's δ_j as used by the loss", "weight", per_step=True),
    Metric(EFF_WEIGHT, "δ_j·|β_j·dt_j|: the analytic counterpart of grad_norm_v", "weight", per_step=True),
    Metric(DT_ABS, "|dt_j|", "sigma", per_step=True),
    Metric(S, "s_j, the per-element std of the Gaussian transition", "latent units", per_step=True),
    Metric(STD_DEV_T, "σ_t, the SDE diffusion coefficient without the √|dt| factor", "latent units", per_step=True),
    Metric(BETA, "β_j, the coefficient of v·dt in the step mean (§1.1)", "ratio", per_step=True),
    Metric(GRAD_NORM_V, "‖∂L_j/∂v‖ from the velocity's gradient (Guard ≤ 2.5× max/min, baseline 20–26×)", "norm",
           (GRAD_CHART,), per_step=True),
    Metric(ROWS, "rows trained at j this epoch", "rows", per_step=True),
)
SCALARS = tuple(m for m in CATALOGUE if not m.per_step)
STEP_STATS = tuple(m for m in CATALOGUE if m.per_step)


def name_in(pattern: str, key: str) -> str | None:
    """The ``{name}`` part of ``key`` if it matches ``pattern`` (e.g. ``reward/{name}/mean``;
    a name holds no "/"; ``{detail}`` matches one more path part), else None."""
    rx = re.escape(pattern).replace(r"\{name\}", "(?P<name>[^/]+)").replace(r"\{detail\}", "[^/]+")
    m = re.fullmatch(rx, key)
    return m.group("name") if m else None


def _find(catalogue: tuple[Metric, ...], key: str) -> Metric | None:
    exact = next((m for m in catalogue if m.key == key), None)
    return exact or next((m for m in catalogue if m.matches(key)), None)


def scalar(key: str) -> Metric | None:
    """The catalogue entry of a run-level scalar key (an exact key before a pattern), or None."""
    return _find(SCALARS, key)


def step_stat(key: str) -> Metric | None:
    """The catalogue entry of a per-denoising-step statistic, or None."""
    return _find(STEP_STATS, key)


def on_chart(chart: str) -> list[str]:
    """Every key or pattern (scalars first, then step statistics) the catalogue lists for ``chart``."""
    return [m.key for m in (*SCALARS, *STEP_STATS) if chart in m.charts]

"""Evaluation on the fixed prompt × seed set: deterministic ODE sampling (ALGORITHM.md §2.4) with
the EMA weights, scored by every proxy reward (weight 0 included) and every gold evaluator."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from grpo_guard import metrics as M
from grpo_guard.models.base import Backbone
from grpo_guard.training.recording import Recorder, Sample
from grpo_guard.training.rollout import sample_ode, seed_noise


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class EvalSet:
    """The fixed eval set: every prompt once per seed, with its initial noise drawn from the seed."""

    prompts: list[str]   # (M,) one entry per (prompt, seed) pair
    seeds: list[int]     # (M,)
    noise: torch.Tensor  # (M, *L)

    @classmethod
    def build(cls, prompts: list[str], seeds: list[int], latent_shape: tuple[int, ...]) -> EvalSet:
        pairs = [(p, s) for p in prompts for s in seeds]
        return cls([p for p, _ in pairs], [s for _, s in pairs], seed_noise([s for _, s in pairs], latent_shape))


def score_images(images: np.ndarray, prompts: list[str], rewards: Mapping[str, object],
                 details: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """name -> (B,) float64 scores. A reward with ``details(images, prompts) -> (scores, extras)``
    (e.g. GenEval's strict and per-family accuracy) is scored through it, once; with ``details``
    given, each extra's mean over the images it applies to (non-NaN) is stored there as
    ``<name>/<extra>`` (an extra that applies to no image is left out, not logged as 0), with what
    the reward's ``summary(means)`` derives from them (GenEval's ``overall``)."""
    out = {}
    for name, fn in rewards.items():
        detail = getattr(fn, "details", None)
        if callable(detail):
            vals, extras = detail(images, prompts)
            means = {}
            for key, v in extras.items():
                v = np.asarray(v, dtype=np.float64).reshape(-1)
                if np.isfinite(v).any():
                    means[key] = float(np.nanmean(v))
            summary = getattr(fn, "summary", None)
            if callable(summary):
                means.update(summary(means))
            if details is not None:
                details.update({f"{name}/{k}": v for k, v in means.items()})
        else:
            vals = fn(images, prompts)  # type: ignore[operator]
        vals = np.asarray(vals, dtype=np.float64).reshape(-1)
        if vals.shape[0] != len(prompts):
            raise ValueError(f"reward {name!r} returned {vals.shape[0]} scores for {len(prompts)} images")
        out[name] = vals
    return out


def reward_health(*reward_maps: Mapping[str, object]) -> dict[str, float]:
    """``reward/<name>/latency`` and ``reward/<name>/failures`` of every reward that counts them
    (reward servers: ``take_stats()``), since the last call; proxies map names to (fn, weight).
    A name that is both a proxy and a gold evaluator (two clients) is counted once, summed."""
    lat: dict[str, list[float]] = {}
    fails: dict[str, float] = {}
    for rewards in reward_maps:
        for name, fn in rewards.items():
            take = getattr(fn[0] if isinstance(fn, tuple) else fn, "take_stats", None)
            if callable(take):
                stats = take()
                fails[name] = fails.get(name, 0.0) + float(stats.get("failures", 0.0))
                if "latency" in stats:
                    lat.setdefault(name, []).append(float(stats["latency"]))
    out = {M.REWARD_FAILURES.format(name=k): v for k, v in fails.items()}
    out.update({M.REWARD_LATENCY.format(name=k): float(np.mean(v)) for k, v in lat.items()})
    return out


@contextlib.contextmanager
def fatal_reward_failures_logged(recorder: Recorder, step: int, *reward_maps: Mapping[str, object]) -> Iterator[None]:
    """Around a scoring that may end the run: when a reward server fails for good, its failed
    attempts (and the latency of the calls that did answer) are still logged at ``step`` before the
    error goes on, so the Run page's Status tab counts the failures that failed the run. No reward
    of the step is logged; resuming prunes the step's rows with the rest of the epoch."""
    from grpo_guard.rewards.remote import RewardServerError  # standard library + numpy

    try:
        yield
    except RewardServerError:
        recorder.log_scalars(step, reward_health(*reward_maps))
        recorder.flush()
        raise


@torch.no_grad()
def evaluate(backbone: Backbone, eval_set: EvalSet, sigmas: torch.Tensor, *, cfg_scale: float,
             proxies: Mapping[str, tuple[object, float]], golds: Mapping[str, object], step: int,
             recorder: Recorder, chunk: int = 64, should_stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Sample the eval set (the caller swaps in the EMA weights), score it, log one PNG per image
    and return ``eval/*`` scalars: each reward and evaluator, their breakdowns ``eval/<name>/<key>``
    (:func:`score_images`: ``eval/geneval/overall``, ``image_mean``, ``<family>``), ``eval/proxy`` (the
    weighted total of the proxies) and ``eval/gold`` (the mean of the gold evaluators)."""
    latents = sample_ode(backbone, eval_set.prompts, eval_set.noise, sigmas, cfg_scale=cfg_scale, chunk=chunk,
                         should_stop=should_stop)
    images = backbone.decode(latents)
    details: dict[str, float] = {}
    p_scores = score_images(images, eval_set.prompts, {k: fn for k, (fn, _) in proxies.items()}, details)
    g_scores = score_images(images, eval_set.prompts, golds, details)
    proxy_total = sum(w * p_scores[k] for k, (_, w) in proxies.items())
    gold_total = np.mean([g_scores[k] for k in golds], axis=0) if golds else None
    for i, (prompt, seed) in enumerate(zip(eval_set.prompts, eval_set.seeds, strict=True)):
        scores = {k: float(v[i]) for k, v in {**p_scores, **g_scores}.items()}
        recorder.log_sample(Sample(step=step, prompt=prompt, seed=seed, image=png_bytes(images[i]), scores=scores,
                                   proxy=float(proxy_total[i]),
                                   gold=float(gold_total[i]) if gold_total is not None else None))
    out = {M.EVAL_REWARD.format(name=k): float(v.mean()) for k, v in {**p_scores, **g_scores}.items()}
    out.update({M.EVAL_DETAIL.format(name=k.split("/", 1)[0], detail=k.split("/", 1)[1]): v for k, v in details.items()})
    out[M.EVAL_PROXY] = float(np.mean(proxy_total))
    out[M.EVAL_GOLD] = float(np.mean(gold_total)) if gold_total is not None else math.nan
    return out

"""Run a benchmark on a model and store the result: deterministic ODE sampling of every prompt
once per seed 0..N-1 (the sampler of the in-training evaluation, :mod:`grpo_guard.training.rollout`),
with the checkpoint's EMA weights when it has them, scored by the benchmark's scorers, summarised
by its protocol (:mod:`grpo_guard.evaluation.benchmarks`). ``evaluate`` also fills the base
column: a base-model result under the same protocol is reused from the store, else computed once
and stored for every later evaluation of that base."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grpo_guard.evaluation.request import EvalRequest
from grpo_guard.store import evaluations as store

Progress = Callable[[str], None]


@dataclass
class EvalResult:
    evaluation_id: int
    metrics: dict[str, float]
    per_prompt: list[dict[str, Any]] = field(default_factory=list)
    images_location: str | None = None
    reused: bool = False
    seconds: float = 0.0
    images: int = 0


def build_scorers(request: EvalRequest) -> dict[str, object]:
    """The benchmark's scorers; weights are looked up now (ModelNotFoundError names what is missing)."""
    from grpo_guard.rewards import build_reward

    return {name: build_reward(name, **opts) for name, opts in request.scorer_options().items()}


def load_backbone(request: EvalRequest, device: str | None = None):
    """The request's backbone; for a checkpoint, its LoRA / trainable weights and (if saved) EMA."""
    from grpo_guard.models import build_backbone
    from grpo_guard.training.checkpoint import CheckpointError, load_checkpoint

    bb = build_backbone(request.config, device=device)
    if request.model.kind == "base" or not request.checkpoint_file:
        return bb
    try:
        ckpt = load_checkpoint(request.checkpoint_file)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    arch = ckpt.config
    bb.add_lora(arch.lora_rank, arch.lora_alpha, arch.lora_targets)
    try:
        bb.load_trainable_state_dict(ckpt.trainable)
    except ValueError as e:
        raise ValueError(f"The checkpoint {ckpt.path} does not fit this model: {e}") from None
    if ckpt.ema is not None:
        with torch.no_grad():
            for p, s in zip(bb.trainable_parameters(), ckpt.ema, strict=True):
                p.copy_(s)
    return bb


def score_batch(scorers: dict[str, object], images: np.ndarray, prompts: list[Any]) -> dict[str, np.ndarray]:
    """scorer -> (B,) per-image scores (GenEval: its strict verdict, as the benchmark fixes)."""
    out = {}
    for name, fn in scorers.items():
        detail = getattr(fn, "details", None)
        vals = detail(images, prompts)[0] if callable(detail) else fn(images, prompts)  # type: ignore[operator]
        out[name] = np.asarray(vals, dtype=np.float64).reshape(-1)
    return out


@torch.no_grad()
def sample_and_score(request: EvalRequest, backbone, scorers: dict[str, object], *, on_image=None,
                     batch: int = 16, progress: Progress | None = None) -> tuple[dict[str, list[float]], list]:
    """Sample every (prompt, seed) pair in batches, score each batch, hand each image to
    ``on_image(index, prompt_index, seed, image)``. Returns per-scorer per-image scores and
    (prompt_index, seed) per image, in order."""
    from grpo_guard.training.rollout import sample_ode, seed_noise

    c = request.config
    pairs = [(i, s) for i in range(len(request.prompts)) for s in range(request.images_per_prompt)]
    sigmas = backbone.sigmas(c.eval_num_steps, c.shift, c.resolution)
    shape = backbone.latent_shape(c.resolution)
    per_image: dict[str, list[float]] = {n: [] for n in scorers}
    for a in range(0, len(pairs), batch):
        chunk = pairs[a:a + batch]
        prompts = [request.prompts[i] for i, _ in chunk]
        latents = sample_ode(backbone, prompts, seed_noise([s for _, s in chunk], shape), sigmas,
                             cfg_scale=c.cfg_scale, chunk=batch)
        images = backbone.decode(latents)
        for name, vals in score_batch(scorers, images, prompts).items():
            per_image[name].extend(float(v) for v in vals)
        if on_image is not None:
            for k, ((i, s), img) in enumerate(zip(chunk, images, strict=True)):
                on_image(a + k, i, s, img)
        if progress:
            progress(f"{min(a + batch, len(pairs))}/{len(pairs)} images")
    return per_image, pairs


def run_stored(evaluation_id: int, request: EvalRequest, *, device: str | None = None,
               scorers: dict[str, object] | None = None, progress: Progress | None = None,
               keep_failed: bool = True) -> EvalResult:
    """Evaluate ``request`` into the (running) row ``evaluation_id``: images to the artifact
    store, metrics and per-prompt results to the row. On any failure the row is marked failed
    with the reason (``keep_failed``) or deleted, and its images are removed; the exception propagates."""
    from grpo_guard.store import artifacts
    from grpo_guard.training.evaluation import png_bytes

    t0 = time.perf_counter()
    loc = store.images_location(evaluation_id, request.model.run_id)
    try:
        scorers = scorers if scorers is not None else build_scorers(request)
        backbone = load_backbone(request, device)
        files: dict[int, list[str]] = {}
        # PNG encoding and writing overlap the next batch's sampling and scoring (zlib drops the
        # GIL): the store costs the evaluation almost nothing on top of the bare scorer loop
        writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gg-eval-png")
        pending = []

        def write(name: str, image: np.ndarray) -> None:
            artifacts.put_bytes(name, png_bytes(image), what="an evaluation image")

        def keep(index: int, prompt_index: int, seed: int, image: np.ndarray) -> None:
            name = f"{loc}/{prompt_index:05d}_{seed}.png"
            pending.append(writer.submit(write, name, np.array(image, copy=True)))
            files.setdefault(prompt_index, []).append(name)

        try:
            per_image, pairs = sample_and_score(request, backbone, scorers, on_image=keep, progress=progress)
            for f in pending:
                f.result()  # an image that could not be written fails the evaluation
        finally:
            writer.shutdown(wait=True, cancel_futures=True)
        tags = [(getattr(request.prompts[i], "meta", None) or {}).get("tag") for i, _ in pairs]
        metrics = request.benchmark.summarize(per_image, tags)
        per_prompt = []
        for i, p in enumerate(request.prompts):
            idx = [k for k, (j, _) in enumerate(pairs) if j == i]
            row: dict[str, Any] = {"prompt": str(p)}
            if (meta := getattr(p, "meta", None)) and meta.get("tag"):
                row["tag"] = meta["tag"]
            row.update({n: float(np.mean([per_image[n][k] for k in idx])) for n in per_image})
            row["images"] = files.get(i, [])
            per_prompt.append(row)
        store.finish_evaluation(evaluation_id, metrics, per_prompt, loc)
    except BaseException as e:
        if keep_failed:  # a queued evaluation shows why on its page
            store.fail_evaluation(evaluation_id, f"{type(e).__name__}: {e}")
        else:  # the foreground command said why on the terminal: nothing stays stored
            store.delete_evaluation(evaluation_id)
        with contextlib.suppress(OSError, ValueError):
            artifacts.delete(loc)
        raise
    return EvalResult(evaluation_id, metrics, per_prompt, loc, seconds=time.perf_counter() - t0, images=len(pairs))


def evaluate_one(request: EvalRequest, *, device: str | None = None, reuse: bool = True,
                 evaluation_id: int | None = None, scorers: dict[str, object] | None = None,
                 progress: Progress | None = None, keep_failed: bool = True) -> EvalResult:
    """One model: a stored base result under the same protocol is reused (``reuse``), else a row
    is created (or the given queued one claimed) and filled by :func:`run_stored`."""
    proto = request.protocol()
    if reuse and request.model.kind == "base":
        hit = store.find_result(request.model.key, request.benchmark.name, store.protocol_hash(proto))
        if hit is not None:
            return EvalResult(hit.id, hit.metrics, hit.per_prompt, hit.images_location, reused=True)
    created = evaluation_id is None
    try:
        if created:
            with _signals_held():  # a SIGTERM mid-insert would leave a row no one knows the id of
                evaluation_id = store.create_evaluation(request.benchmark.name, request.model,
                                                        {**proto, "_request": request.to_json()}, status="running")
        return run_stored(evaluation_id, request, device=device, scorers=scorers, progress=progress,
                          keep_failed=keep_failed)
    except BaseException:
        if created and evaluation_id is not None and not keep_failed:
            # a signal before run_stored's own clean-up began (CI sent SIGTERM just then)
            with contextlib.suppress(Exception):
                store.delete_evaluation(evaluation_id)
        raise


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (main thread only) for a short block; they are delivered after it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def evaluate(request: EvalRequest, *, device: str | None = None, evaluation_id: int | None = None,
             progress: Progress | None = None, keep_failed: bool = True) -> tuple[EvalResult, EvalResult | None]:
    """(this model's result, the base model's result under the same protocol; None when the
    model is the base). The scorers are built once, before any diffusion model loads."""
    scorers = build_scorers(request)
    model = evaluate_one(request, device=device, evaluation_id=evaluation_id, scorers=scorers, progress=progress,
                         keep_failed=keep_failed)
    base = None
    if request.model.kind != "base":
        base = evaluate_one(request.base(), device=device, scorers=scorers, progress=progress,
                            keep_failed=keep_failed)
    return model, base


def execute_queued(evaluation_id: int, *, device: str | None = None) -> str:
    """The worker's side of a queued evaluation: claim the row, rebuild its request, evaluate.
    Returns succeeded | failed | skipped (not queued: a duplicate message)."""
    if not store.claim_evaluation(evaluation_id):
        return "skipped"
    row = store.get_evaluation(evaluation_id)
    try:
        request = EvalRequest.from_json(row.protocol["_request"])
    except (KeyError, TypeError, ValueError) as e:
        store.fail_evaluation(evaluation_id, f"the stored request cannot be read: {e}")
        return "failed"
    try:
        evaluate(request, device=device, evaluation_id=evaluation_id)
    except Exception as e:  # noqa: BLE001 - the reason goes on the row, where its page shows it
        # run_stored recorded it; a failure before it (building the scorers) left the row running
        current = store.get_evaluation(evaluation_id)
        if current is not None and current.status == "running":
            store.fail_evaluation(evaluation_id, f"{type(e).__name__}: {e}")
        return "failed"
    return "succeeded"

"""What to evaluate, checked before anything loads: the benchmark, the model (the base of a
config, a run's checkpoint at ``best`` / ``last`` / a step, or a checkpoint file), its sampler
settings, the prompts and the images per prompt. Every bad input is a ``ValueError`` with one
sentence, raised before a model loads or a row is written. Torch-free (the Run page's
Evaluate… button builds requests with it)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.evaluation.benchmarks import Benchmark, for_config, get_benchmark, protocol
from grpo_guard.store.evaluations import ModelRef

MAX_IMAGES_PER_PROMPT = 64


@dataclass
class EvalRequest:
    benchmark: Benchmark
    model: ModelRef
    config: RunConfig          # the model's config: backbone, base weights, LoRA shape, sampler
    prompts_spec: str
    prompts: list[Any]         # resolved Prompt objects
    images_per_prompt: int
    checkpoint_file: str | None = None   # absolute path of the .pt to load (run or checkpoint)

    def scorer_options(self) -> dict[str, dict[str, Any]]:
        return {n: self.benchmark.scorer_options(n, self.config.reward_factory_options(n))
                for n in self.benchmark.scorers}

    def protocol(self) -> dict[str, Any]:
        return protocol(self.benchmark, self.config, self.prompts_spec, self.prompts, self.images_per_prompt,
                        self.scorer_options())

    def base(self) -> EvalRequest:
        """The same request for the base model of this config (the table's base column)."""
        return EvalRequest(self.benchmark, base_ref(self.config), self.config, self.prompts_spec, self.prompts,
                           self.images_per_prompt)

    def to_json(self) -> dict[str, Any]:
        """What a worker needs to run it again (stored with the queued row)."""
        return {"benchmark": self.benchmark.name, "model": vars(self.model), "config": self.config.to_dict(),
                "prompts": self.prompts_spec, "images_per_prompt": self.images_per_prompt,
                "checkpoint_file": self.checkpoint_file}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalRequest:
        from grpo_guard.prompts import resolve_prompts

        config = RunConfig.from_dict(data["config"])
        bench = for_config(get_benchmark(data["benchmark"]), config)
        return cls(bench, ModelRef(**data["model"]), config, data["prompts"],
                   resolve_prompts(data["prompts"], field="prompts"), int(data["images_per_prompt"]),
                   data.get("checkpoint_file"))


def base_key(config: dict[str, Any]) -> str:
    """The store's key of a config's base model (a ``RunConfig.to_dict()``)."""
    return f"base:{config.get('backbone', '')}:{config.get('model') or ''}"


def base_ref(config: RunConfig) -> ModelRef:
    return ModelRef("base", base_key(config.to_dict()))


def _step_checkpoint(run_id: int, step: str) -> tuple[int, str]:
    """(step, absolute path) of the run's checkpoint ``step`` (best, last or a number) on disk."""
    from grpo_guard.store import artifacts, queries

    rows = [c for c in queries.checkpoints(run_id) if c.on_disk]
    if step == "best":
        best = queries.best_checkpoint(run_id)
        if best is None:
            raise ValueError(f"Run {run_id} has no best checkpoint on disk; give --step last or a step number.")
        return best.step, artifacts.resolve(best.location)
    if not rows:
        raise ValueError(f"Run {run_id} has no checkpoint on disk to evaluate.")
    if step == "last":
        return rows[-1].step, artifacts.resolve(rows[-1].location)
    try:
        n = int(step)
    except ValueError:
        raise ValueError(f"--step must be best, last or a step number, got {step!r}.") from None
    hit = next((c for c in rows if c.step == n), None)
    if hit is None:
        kept = ", ".join(str(c.step) for c in rows)
        raise ValueError(f"Run {run_id} has no checkpoint at step {n} on disk (pruned or never saved); kept: {kept}.")
    return n, artifacts.resolve(hit.location)


def checkpoint_config(path: str) -> RunConfig:
    """The config in a checkpoint's JSON sidecar (read without torch)."""
    if not os.path.isfile(path):
        raise ValueError(f"No checkpoint file at {path}.")
    side = os.path.splitext(path)[0] + ".json"
    try:
        with open(side, encoding="utf-8") as fh:
            return RunConfig.from_dict(json.load(fh)["config"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        raise ValueError(f"The checkpoint {path} has no readable sidecar {side} with its run config "
                         f"({type(e).__name__}).") from None


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_scorers(bench: Benchmark, config: RunConfig) -> None:
    """ValueError (one sentence) when a scorer of ``bench`` is not registered here or does not
    score the model's backbone (OCR or PickScore on toy images, the toy evaluators on SD3's)."""
    from grpo_guard.rewards import REGISTRY

    for name in bench.scorers:
        spec = REGISTRY.get(name)
        if spec is None:
            raise ValueError(f"The {bench.name} benchmark scores with {name!r}, which is not a registered reward "
                             "here (grpo-guard rewards list).")
        if config.backbone not in spec.backbones:
            raise ValueError(f"The {bench.name} benchmark scores with {name}, which does not score {config.backbone} "
                             f"images (it scores {', '.join(spec.backbones)}); pick a benchmark for this model "
                             "(grpo-guard eval --list).")


def build_request(benchmark: str, *, run_id: int | None = None, step: str = "best", checkpoint: str | None = None,
                  config_path: str | None = None, prompts: str | None = None,
                  images_per_prompt: int | None = None) -> EvalRequest:
    """Resolve and check a request (module docstring). Raises ValueError (one sentence)."""
    from grpo_guard.prompts import resolve_prompts

    bench = get_benchmark(benchmark)
    if run_id is not None and checkpoint:
        raise ValueError("Give --run or --checkpoint, not both.")
    ckpt_file = None
    if run_id is not None:
        from grpo_guard.store import queries

        try:
            run = queries.get_run(run_id)
        except LookupError:
            raise ValueError(f"No run with id {run_id} in the store.") from None
        n, ckpt_file = _step_checkpoint(int(run_id), str(step))
        config = checkpoint_config(ckpt_file)
        model = ModelRef("run", f"run:{run.id}:{n}", int(run.id), n, ckpt_file)
    elif checkpoint:
        ckpt_file = os.path.abspath(os.path.expanduser(checkpoint))
        config = checkpoint_config(ckpt_file)
        model = ModelRef("checkpoint", f"checkpoint:{file_digest(ckpt_file)}", checkpoint_path=ckpt_file)
    elif config_path:
        config = RunConfig.from_file(config_path)
        model = base_ref(config)
    else:
        raise ValueError("Give --run ID, --checkpoint PATH or --config CFG (the base model of that config).")
    if config_path and (run_id is not None or checkpoint):
        # the model's own config; the given one says where this machine keeps the scorers' weights
        config = RunConfig.from_dict({**config.to_dict(),
                                      "reward_options": RunConfig.from_file(config_path).reward_options})
    bench = for_config(bench, config)
    spec = prompts or bench.prompts
    if spec is None:
        raise ValueError(f"The {bench.name} benchmark needs --prompts (hf:DATASET[:SPLIT][#COLUMN] or file:PATH).")
    check_scorers(bench, config)
    ipp = int(images_per_prompt if images_per_prompt is not None else bench.images_per_prompt)
    if not 1 <= ipp <= MAX_IMAGES_PER_PROMPT:
        raise ValueError(f"--images-per-prompt must be between 1 and {MAX_IMAGES_PER_PROMPT}, got {ipp}.")
    try:
        resolved = resolve_prompts(spec, field="prompts")
    except ValueError as e:
        raise ValueError(f"--prompts {spec}: {e}") from None
    if bench.name == "geneval":
        missing = next((p for p in resolved if "include" not in (getattr(p, "meta", None) or {})), None)
        if missing is not None:
            raise ValueError(f"The geneval benchmark needs GenEval metadata for every prompt; {str(missing)!r} has "
                             "none (use geneval:test or geneval:file:evaluation_metadata.jsonl).")
    return EvalRequest(bench, model, config, spec, resolved, ipp, ckpt_file)



def _value_at(steps: list[int], values: list[float], step: int) -> float | None:
    """The value logged at the latest step at or before ``step`` (finite), else None."""
    import math

    best = None
    for s, v in zip(steps, values, strict=True):
        if s <= step and math.isfinite(v):
            best = v
    return best


def equal_proxy_partners(request: EvalRequest) -> list[tuple[EvalRequest, float, float]]:
    """For a run's checkpoint: each A/B partner's (or fellow experiment arm's run with the same
    seed) on-disk checkpoint whose ``eval/proxy`` is nearest this run's ``eval/proxy`` at the
    evaluated step, as (request, this run's proxy, the partner's proxy). Empty when the run has
    no partner or no proxy series."""
    from grpo_guard import metrics as M
    from grpo_guard.store import artifacts, queries

    if request.model.kind != "run" or request.model.run_id is None:
        return []
    rid, step = int(request.model.run_id), int(request.model.step or 0)
    mine = queries.metric_series(rid, [M.EVAL_PROXY]).get(M.EVAL_PROXY)
    level = _value_at(*mine, step) if mine else None
    if level is None:
        return []
    partners = [p for p in queries.pair_of(rid) if p != rid]
    exp = queries.experiment_of(rid)
    if exp is not None:
        partners += [m.run.id for m in queries.experiment_runs(exp[0])
                     if m.run.id != rid and m.seed == exp[2] and m.arm != exp[1] and m.run.id not in partners]
    out = []
    for other in partners:
        series = queries.metric_series(other, [M.EVAL_PROXY]).get(M.EVAL_PROXY)
        if not series:
            continue
        near = []
        for c in queries.checkpoints(other):
            v = _value_at(*series, c.step) if c.on_disk else None
            if v is not None:
                near.append((abs(v - level), c, v))
        if not near:
            continue
        _, ckpt, value = min(near, key=lambda t: (t[0], t[1].step))
        path = artifacts.resolve(ckpt.location)
        out.append((EvalRequest(request.benchmark, ModelRef("run", f"run:{other}:{ckpt.step}", other, ckpt.step, path),
                                checkpoint_config(path), request.prompts_spec, request.prompts,
                                request.images_per_prompt, path), level, value))
    return out

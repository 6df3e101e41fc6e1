"""The benchmark protocols ``grpo-guard eval`` runs: which prompts, how many images per prompt,
which scorers, and how per-image scores become the reported metrics. Torch-free (the app and the
submit path validate requests with it); :mod:`grpo_guard.evaluation.runner` does the work.

- ``geneval``: GenEval (Ghosh et al. 2023) as its ``evaluation/evaluate_images.py`` and
  ``summary_scores.py`` define it — strict verdicts, 4 images per prompt, Overall = the mean of the
  task families' accuracies (the paper's figure), each family, and the image mean. The official
  prompts: ``--prompts geneval:file:evaluation_metadata.jsonl`` (default ``geneval:test``).
- ``ocr``: Flow-GRPO's OCR accuracy (the ``ocr`` scorer: 1 when the quoted text is read anywhere
  in the image, else 1 − its normalised edit distance) on ``ocr:test``, one image per prompt.
- ``preference``: PickScore, ImageReward, Aesthetic, CLIPScore and HPSv2 means on a prompt set
  (``hf:`` or ``file:``, DrawBench-style), one image per prompt, as Flow-GRPO's tables report them,
  and the mean of every other gold evaluator the model's config names (``gold:``: any registered
  one, built in, from a plugin or a reward server), after those five.
- ``toy``: the toy world's gold evaluators on ``toy:heldout`` (runs anywhere, CI included).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

FAMILIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class Benchmark:
    """One protocol. ``scorers``: registered reward names; ``headline``: the metric a page shows
    first; ``prompts``: the default prompt set (None: ``--prompts`` is required)."""

    name: str
    description: str
    prompts: str | None
    images_per_prompt: int
    scorers: tuple[str, ...]
    headline: str
    # options every scorer gets whatever the run config says (GenEval scores strictly here)
    fixed_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def scorer_options(self, name: str, configured: Mapping[str, Any]) -> dict[str, Any]:
        """``configured`` (the run config's reward_options for ``name``) with the protocol's own options."""
        return {**{k: v for k, v in configured.items() if v is not None}, **dict(dict(self.fixed_options).get(name, ()))}

    def metric_names(self, present: Sequence[str] = ()) -> list[str]:
        """The metrics in table order (for geneval the families ``present`` in the prompt set)."""
        if self.name == "geneval":
            return ["overall", *[f for f in FAMILIES if f in present], "image_mean"]
        return list(self.scorers)

    def summarize(self, per_image: Mapping[str, Sequence[float]], tags: Sequence[str | None]) -> dict[str, float]:
        """The reported metrics from per-image scores (``per_image[scorer]``, one value per image;
        ``tags``: each image's GenEval task family)."""
        if self.name != "geneval":
            return {k: _mean(per_image[k]) for k in self.scorers}
        strict = list(per_image["geneval"])
        fams = {f: _mean([v for v, t in zip(strict, tags, strict=True) if t == f]) for f in FAMILIES if f in tags}
        return {"overall": _mean(list(fams.values())), **fams, "image_mean": _mean(strict)}


def _mean(values: Sequence[float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("geneval", "GenEval: Overall (mean of the six task families), each family and the image mean; "
              "strict verdicts, 4 images per prompt", "geneval:test", 4, ("geneval",), "overall",
              fixed_options=(("geneval", (("score", "strict"),)),)),
    Benchmark("ocr", "OCR accuracy (1 - normalised edit distance of the quoted text, 1 when it is read "
              "anywhere in the image) on ocr:test, as Flow-GRPO",
              "ocr:test", 1, ("ocr",), "ocr"),
    Benchmark("preference", "PickScore, ImageReward, Aesthetic, CLIPScore and HPSv2, then the config's other "
              "gold evaluators, on a prompt set (--prompts hf:... or file:..., DrawBench-style)", None, 1,
              ("pickscore", "imagereward", "aesthetic", "clipscore", "hpsv2"), "pickscore"),
    Benchmark("toy", "the toy world's gold evaluators on toy:heldout", "toy:heldout", 4,
              ("toy_alignment", "toy_fidelity", "toy_palette_purity"), "toy_alignment"),
)}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; ValueError with one sentence listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (grpo-guard eval --list).")
    return BENCHMARKS[name]


def for_config(bench: Benchmark, config: Any) -> Benchmark:
    """``bench`` as it runs for a model of ``config``: ``preference`` also scores the config's
    other gold evaluators (module docstring); every other benchmark is fixed."""
    if bench.name != "preference":
        return bench
    extra = tuple(dict.fromkeys(str(n) for n in (getattr(config, "gold", None) or ()) if n not in bench.scorers))
    return replace(bench, scorers=bench.scorers + extra) if extra else bench


def prompt_set_hash(prompts: Sequence[Any]) -> str:
    """SHA-256 of the prompt texts and their metadata, in order."""
    items = [[str(p), dict(getattr(p, "meta", None) or {})] for p in prompts]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


# scorer options that say where or how fast a scorer runs, not what it measures
_RUNTIME_OPTIONS = ("device", "dtype", "batch_size")


def protocol(bench: Benchmark, config: Any, prompts_spec: str, prompts: Sequence[Any], images_per_prompt: int,
             scorer_options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Everything that fixes an evaluation's numbers besides the model: what the store keys a
    result by (a base result is reused only under the same protocol)."""
    from grpo_guard import __version__

    scorers = {name: {k: v for k, v in sorted(opts.items()) if k not in _RUNTIME_OPTIONS and not k.endswith("path")}
               for name, opts in scorer_options.items()}
    out = {"benchmark": bench.name, "prompts": prompts_spec, "prompt_set_hash": prompt_set_hash(prompts),
           "num_prompts": len(prompts), "images_per_prompt": int(images_per_prompt),
           "seeds": list(range(int(images_per_prompt))), "resolution": config.resolution,
           "num_steps": config.eval_num_steps, "cfg_scale": config.cfg_scale, "shift": config.shift,
           "scorers": scorers, "code_version": __version__}
    if bench.name == "geneval":
        from grpo_guard.rewards.geneval_rules import DETECTOR_SCALE

        out["detector_scale"] = list(scorers.get("geneval", {}).get("detector_scale") or DETECTOR_SCALE)
    return out

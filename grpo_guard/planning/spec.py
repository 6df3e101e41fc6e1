"""Which architecture a run config names, read as configs only (no weights, no network).

A plan needs the pipeline's component configs: the transformer's, to build it under fake tensors,
and the text encoders' and VAE's, to count their parameters. They come from

- a local pipeline directory (``model`` is a path, or the toy base model): its ``model_index.json``
  and each component's ``config.json``, tokenizer lengths from ``tokenizer_config.json``;
- else the architectures shipped with the package (``architectures/*.json``: SD3.5-Medium,
  SD3.5-Large, FLUX.1-dev), chosen by the hub id, so a plan needs no download.

Imports no torch (the parameter counts that need torch live in :mod:`grpo_guard.planning.measure`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

SHIPPED = {"sd35_medium": "SD3.5-Medium", "sd35_large": "SD3.5-Large", "flux1_dev": "FLUX.1-dev"}
_MAX_CONFIG_BYTES = 1 << 20


class PlanError(ValueError):
    """The plan cannot be made (unknown architecture, unreadable config); one sentence."""


@dataclass
class PipelineSpec:
    """The component configs of one pipeline."""

    name: str                                   # "SD3.5-Medium", or the directory
    pipeline: str                               # StableDiffusion3Pipeline | FluxPipeline
    components: dict[str, dict[str, Any]]       # component -> its config (with "_class_name")
    tokenizer_max_length: dict[str, int] = field(default_factory=dict)

    @property
    def transformer(self) -> dict[str, Any]:
        return self.components["transformer"]

    def text_length(self, backbone: str) -> int:
        """Tokens per prompt embedding, as the adapters build it: SD3 joins CLIP's (padded to its
        tokenizer length) and T5's (≤ 256); FLUX uses T5's alone (≤ 512)."""
        t = self.tokenizer_max_length
        if backbone == "flux":
            return min(512, t.get("tokenizer_2", 512))
        clip = t.get("tokenizer", 77)
        t5 = min(256, t.get("tokenizer_3", 256)) if "text_encoder_3" in self.components else 0
        return clip + t5


def shipped(key: str) -> PipelineSpec:
    """One of the architectures in ``grpo_guard/planning/architectures``."""
    data = json.loads(resources.files("grpo_guard.planning").joinpath("architectures", f"{key}.json").read_text())
    return PipelineSpec(data["name"], data["pipeline"], data["components"], dict(data["tokenizer_max_length"]))


def reward_parameters() -> dict[str, int]:
    """Parameters of the reward and gold models a run keeps loaded, by registry name."""
    text = resources.files("grpo_guard.planning").joinpath("architectures", "rewards.json").read_text()
    return {k: int(v) for k, v in json.loads(text)["parameters"].items()}


def _read_json(path: str) -> dict[str, Any]:
    try:
        if os.path.getsize(path) > _MAX_CONFIG_BYTES:
            raise PlanError(f"{path} is larger than {_MAX_CONFIG_BYTES} bytes; it is not a model config")
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise PlanError(f"cannot read the model config {path} ({e})") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path} is not a JSON object")
    return data


def from_directory(path: str) -> PipelineSpec:
    """The spec of a diffusers pipeline directory (``save_pretrained`` layout)."""
    index = _read_json(os.path.join(path, "model_index.json"))
    components: dict[str, dict[str, Any]] = {}
    lengths: dict[str, int] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            continue
        if name.startswith("tokenizer"):
            tok = os.path.join(path, name, "tokenizer_config.json")
            if os.path.isfile(tok):
                n = _read_json(tok).get("model_max_length")
                if isinstance(n, int) and 0 < n < 1_000_000:
                    lengths[name] = n
            continue
        cfg_path = os.path.join(path, name, "config.json")
        if not os.path.isfile(cfg_path):
            continue
        cfg = _read_json(cfg_path)
        arch = cfg.get("architectures")
        cfg["_class_name"] = arch[0] if isinstance(arch, list) and arch else cfg.get("_class_name", entry[1])
        components[name] = cfg
    if "transformer" not in components:
        raise PlanError(f"{path} has no transformer/config.json; a plan needs the pipeline's configs")
    pipeline = index.get("_class_name") or ("FluxPipeline" if "Flux" in components["transformer"]["_class_name"]
                                            else "StableDiffusion3Pipeline")
    return PipelineSpec(path, str(pipeline), components, lengths)


def spec_for(config: Any) -> PipelineSpec:
    """The architecture ``config`` trains: its local directory, the toy base model, or the shipped
    architecture its hub id names. An unknown hub id raises :class:`PlanError`."""
    model = (config.model or "").strip()
    if config.backbone == "toy" and not model:
        from grpo_guard.toyworld import BASE_MODEL_DIR

        return from_directory(str(BASE_MODEL_DIR))
    local = os.path.expanduser(model)
    if model and os.path.isdir(local):
        return from_directory(local)
    low = model.lower()
    if config.backbone == "flux" and ("flux.1-dev" in low or "flux.1-schnell" in low or not model):
        return shipped("flux1_dev")
    if config.backbone == "sd3" and "3.5-large" in low:
        return shipped("sd35_large")
    if config.backbone == "sd3" and ("3.5-medium" in low or not model):
        return shipped("sd35_medium")
    raise PlanError(f"no architecture is known for model {model!r} (backbone {config.backbone}): give a local "
                    "pipeline directory, or a hub id of SD3.5-Medium, SD3.5-Large or FLUX.1-dev")

"""The torch side of an export: rebuild the trained model from a checkpoint and write it as a
diffusers LoRA file or a complete ``save_pretrained`` pipeline directory.

- **LoRA** (``pytorch_lora_weights.safetensors``): the adapter's peft state dict
  (``get_peft_model_state_dict``) written by the pipeline class's own
  ``StableDiffusion3Pipeline.save_lora_weights`` / ``FluxPipeline.save_lora_weights``, so the
  keys carry the ``transformer.`` prefix and the safetensors metadata carries the adapter's
  ``LoraConfig`` (rank, alpha, target modules) that ``pipe.load_lora_weights(DIR)`` reads back:
  without it diffusers would assume alpha = rank.
- **Pipeline**: the transformer with the LoRA merged (peft's own ``merge``) or the fully
  fine-tuned one, saved in float32 (what ``grpo-guard sample`` computes with on CPU), a
  scheduler whose config reproduces the run's sigma table, and the base's other components:
  linked (a symlink to the base's folder) when the base stores them as float32 safetensors,
  otherwise written anew in float32 safetensors (the shipped toy keeps fp16 files: linking them
  beside a float32 transformer would make plain ``from_pretrained(DIR)`` fail on mixed dtypes).
  With ``copy=True`` every component is written into the folder.

Everything runs in float32 on the given device (CPU by default) whatever the run's
``mixed_precision``: the export is the model, not a training setting.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch

from grpo_guard.config import RunConfig
from grpo_guard.training.checkpoint import Checkpoint, apply_checkpoint

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class TrainedModel:
    """A base model with a checkpoint's weights applied."""

    backbone: Any  # grpo_guard.models.base.Backbone (an SD3Backbone subclass)
    config: RunConfig
    weights: str  # "ema" or "raw"
    base_dir: str  # the local directory of the base pipeline


def base_pipeline_dir(config: RunConfig) -> str:
    """The local directory of the run's base pipeline (the shipped toy when ``model`` is empty);
    ``ModelNotFoundError`` with one sentence when it is gone."""
    from grpo_guard.models.loading import resolve_pipeline

    if config.backbone == "toy" and not config.model:
        from grpo_guard.toyworld import BASE_MODEL_DIR

        return resolve_pipeline(BASE_MODEL_DIR, what="shipped toy base model")
    return resolve_pipeline(config.model, what=f"{config.backbone} base model",
                            fix="export needs the run's base model where the run found it; set it back "
                                "there or export on the machine that holds it")


def load_trained(ckpt: Checkpoint, weights: str = "auto", device: str = "cpu") -> TrainedModel:
    """Build the run's base model in float32 and apply ``ckpt`` (``weights``: auto/ema/raw)."""
    from grpo_guard.models import build_backbone

    config = ckpt.config.model_copy(update={"mixed_precision": "no", "gradient_checkpointing": False})
    base = base_pipeline_dir(config)
    backbone = build_backbone(config, device=device)
    which = apply_checkpoint(backbone, ckpt, weights)
    backbone.eval()
    return TrainedModel(backbone=backbone, config=config, weights=which, base_dir=base)


def scheduler_overrides(model: TrainedModel) -> dict[str, Any]:
    """Scheduler config entries that make the diffusers pipeline step through exactly the sigma
    table the run's evaluation (and ``grpo-guard sample``) used."""
    bb, config = model.backbone, model.config
    if bb.name == "flux":
        if getattr(bb, "static_shift", False):
            return {"use_dynamic_shifting": False, "shift": float(config.shift)}
        return {}
    return {"shift": float(config.shift)}


def export_scheduler(model: TrainedModel):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(model.backbone.pipe.scheduler.config,
                                                       **scheduler_overrides(model))


def write_lora(model: TrainedModel, out_dir: str) -> str:
    """``pytorch_lora_weights.safetensors`` in ``out_dir`` (the pipeline class's own writer)."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    bb = model.backbone
    if not bb.lora_rank:
        raise ValueError("this run fine-tuned the whole transformer (lora_rank 0), so it has no LoRA to "
                         "export; use --format pipeline.")
    layers = {k: v.detach().to("cpu", torch.float32).contiguous()
              for k, v in get_peft_model_state_dict(bb.transformer).items()}
    meta = bb.transformer.peft_config["default"].to_dict()
    pipeline_class = getattr(diffusers, bb.pipeline_class_name)
    pipeline_class.save_lora_weights(out_dir, transformer_lora_layers=layers,
                                     transformer_lora_adapter_metadata=meta)
    return os.path.join(out_dir, LORA_WEIGHT_NAME)


def merged_transformer(model: TrainedModel) -> torch.nn.Module:
    """The trained transformer as a plain diffusers model: LoRA merged and removed (this
    changes ``model.backbone`` in place), float32."""
    tr = model.backbone.transformer
    if model.backbone.lora_rank:
        tr.fuse_lora(lora_scale=1.0)
        tr.unload_lora()
    return tr.to(torch.float32).requires_grad_(False)


def _float32_safetensors(directory: str) -> bool:
    """True when ``directory``'s weights are safetensors files holding float32 tensors only."""
    from safetensors import safe_open

    if glob.glob(os.path.join(glob.escape(directory), "*.bin")):
        return False
    files = glob.glob(os.path.join(glob.escape(directory), "*.safetensors"))
    if not files:
        return False
    for f in files:
        with safe_open(f, "pt") as h:
            if any(h.get_slice(k).get_dtype() != "F32" for k in h.keys()):  # noqa: SIM118 (no __iter__)
                return False
    return True


def write_pipeline(model: TrainedModel, out_dir: str, *, copy: bool = False,
                   progress: Any = None) -> dict[str, str]:
    """A complete ``save_pretrained`` layout in ``out_dir``. Returns ``{component: how}``, how
    being ``"trained"``, ``"linked"``, ``"written"`` (float32 safetensors) or ``"copied"``."""
    bb = model.backbone
    with open(os.path.join(model.base_dir, "model_index.json"), encoding="utf-8") as fh:
        index = json.load(fh)
    how: dict[str, str] = {}
    os.makedirs(out_dir, exist_ok=True)
    merged_transformer(model).save_pretrained(os.path.join(out_dir, "transformer"), safe_serialization=True)
    how["transformer"] = "trained"
    components = bb.pipe.components
    for name, spec in index.items():
        if name.startswith("_") or name == "transformer" or not isinstance(spec, list) or spec[0] is None:
            continue
        if progress:
            progress(f"writing {name}")
        src, dst = os.path.join(model.base_dir, name), os.path.join(out_dir, name)
        comp = components.get(name)
        if name == "scheduler":
            export_scheduler(model).save_pretrained(dst)
            how[name] = "written"
        elif isinstance(comp, torch.nn.Module):
            if not copy and _float32_safetensors(src):
                os.symlink(os.path.realpath(src), dst, target_is_directory=True)
                how[name] = "linked"
            else:
                comp.to(torch.float32).save_pretrained(dst, safe_serialization=True)
                how[name] = "written"
        elif os.path.isdir(src):  # tokenizers, processors: small files
            if copy:
                shutil.copytree(src, dst)
                how[name] = "copied"
            else:
                os.symlink(os.path.realpath(src), dst, target_is_directory=True)
                how[name] = "linked"
        elif comp is not None and hasattr(comp, "save_pretrained"):
            comp.save_pretrained(dst)
            how[name] = "written"
    with open(os.path.join(out_dir, "model_index.json"), "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, sort_keys=True)
    return how

"""The toy backbone: the shapes world's small SD3 pipeline (``grpo_guard.toyworld``) behind the
SD3 adapter. ``config.model`` empty means the base model shipped in the package
(``grpo_guard/toyworld/base/``); a directory written by ``grpo-guard toy pretrain --out DIR``
works the same way. Weights are stored in fp16 and always run in float32 on CPU.
"""

from __future__ import annotations

import os

from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.models.loading import check_pipeline_dir
from grpo_guard.models.sd3 import SD3Backbone
from grpo_guard.toyworld import BASE_MODEL_DIR


class ToyBackbone(SD3Backbone):
    name = "toy"
    model_description = "toy pipeline"
    missing_model_fix = ("run `grpo-guard toy pretrain --out DIR` and set `model` to DIR, or leave `model` "
                         "empty for the shipped base model")

    @classmethod
    def from_config(cls, config, device: str | None = None) -> ToyBackbone:
        return cls.load(config.model, device=device, mixed_precision=config.mixed_precision,
                        gradient_checkpointing=config.gradient_checkpointing)

    @classmethod
    def load(cls, model: str | None = None, **kwargs) -> ToyBackbone:
        if not model:
            if not os.path.isfile(os.path.join(BASE_MODEL_DIR, "model_index.json")):
                raise ModelNotFoundError(
                    f"The shipped toy base model is missing from {BASE_MODEL_DIR}: reinstall the package, or "
                    f"run `grpo-guard toy pretrain --out DIR` and set `model: DIR`.")
            check_pipeline_dir(BASE_MODEL_DIR, what="shipped toy base model")
            model = BASE_MODEL_DIR
        return super().load(model, **kwargs)  # type: ignore[return-value]

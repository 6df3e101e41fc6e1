"""The shapes toy world: 32×32 images of a coloured circle, square or triangle on a coloured
background, prompted as "a red circle on a blue background".

Self-contained: it builds (``pipeline``), pretrains (``pretrain``) and ships (``base/``) a small
real ``StableDiffusion3Pipeline`` that samples in about a second on a CPU, plus the analytic
checker and learned scorers that the toy rewards use. ``grpo_guard.models.toy`` adapts it to the
Backbone interface; this package never imports ``grpo_guard.models``.

Modules: ``prompts`` (vocabulary, splits, named prompt sets; torch-free), ``data`` (rendering),
``checker`` (analytic colour/shape checker), ``tokenizers``, ``pipeline``, ``scorers``
(fidelity model and shape/colour classifier), ``pretrain``, ``measure``, ``cli``.
"""

import os

BASE_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "base")

"""UnifiedReward (Wang et al. 2025), a gold metric of the GRPO-Guard paper: a Qwen2.5-VL judge
(``CodeGoat24/UnifiedReward-qwen-7b``) asked to rate how well an image matches its caption and how
good it looks, on a 1–5 scale, through ``transformers`` alone.

Weights: the reward option ``path``, ``GG_REWARD_UNIFIEDREWARD_PATH``, or the hub id from the HF
cache (:mod:`grpo_guard.rewards.weights`). The directory needs the model (``config.json`` +
safetensors), its tokenizer and its ``preprocessor_config.json``; the text is tokenised and the
image patches counted here (no ``AutoProcessor``: Qwen's processor insists on a video processor,
which needs torchvision, which this stack does not install).

The question is the one Flow-GRPO sends to its UnifiedReward server: alignment with the caption
and overall quality, "assign a score from 1 to 5 after 'Final Score:'". Two documented rules turn
the judge's answer into a number (option ``score``):

- ``generate`` (default, UnifiedReward's own rule): greedy batched generation of at most
  ``max_new_tokens``; the score is the number after the **last** ``Final Score:`` in the answer
  (``Final Score:\\s*([0-9]+(?:\\.[0-9]+)?)``), kept if it lies in [1, 5]. An answer without one is
  **NaN, never a made-up score**: a proxy's NaN fails the epoch loudly (as any NaN reward does),
  a gold evaluator's is left out of nothing silently — ``eval/unifiedreward/parsed`` logs the share
  of answers that gave a score.
- ``logits``: the answer is forced to begin with ``Final Score:`` and the score is the expected
  value Σ k·p(k)/Σ p(k) over the next token's probabilities of ``1`` … ``5``: one forward pass,
  no parsing, always in [1, 5] (smoother, and cheaper, than generation).

Options: ``path``, ``device`` (default CUDA when available), ``dtype`` (``fp16`` runs the judge in
bfloat16 on CUDA, as Qwen2.5-VL is meant to run; fp32 otherwise), ``batch_size`` (images per
forward/generate, default 8), ``score`` and ``max_new_tokens`` (default 64).

Use it as gold (``gold: [unifiedreward]``) or as a proxy; on a separate GPU box, serve it with
``grpo-guard reward-server --reward unifiedreward --option device=cuda`` and declare that server.
"""

from __future__ import annotations

import re

import numpy as np

from grpo_guard.rewards.weights import check_images, default_device, reward_weights_dir

QUESTION = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this "
    "image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the "
    "provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described "
    "in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, assign a score from "
    "1 to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]")
SCORE = re.compile(r"Final Score:\s*([0-9]+(?:\.[0-9]+)?)")
# Qwen2/2.5-VL's chat format (ChatML) with one image; <|image_pad|> is repeated once per merged patch
TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|>{pads}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
_REQUIRED = ("config.json", "*.safetensors|*.bin", "tokenizer.json|vocab.json", "preprocessor_config.json")


def parse_score(answer: str) -> float:
    """The number after the last ``Final Score:`` if it lies in [1, 5], else NaN."""
    found = SCORE.findall(answer)
    if not found:
        return float("nan")
    value = float(found[-1])
    return value if 1.0 <= value <= 5.0 else float("nan")


class UnifiedReward:
    """``reward(images, prompts) -> (B,)`` the judge's 1–5 score; ``details`` adds ``parsed``."""

    name = "unifiedreward"
    hub_id = "CodeGoat24/UnifiedReward-qwen-7b"

    def __init__(self, path: str | None = None, *, device: str | None = None, dtype: str = "fp32",
                 batch_size: int = 8, score: str = "generate", max_new_tokens: int = 64):
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        model_dir = reward_weights_dir(self.name, path, self.hub_id, required=_REQUIRED)
        self.device = torch.device(default_device(device))
        self.dtype = torch.bfloat16 if dtype == "fp16" and self.device.type == "cuda" else torch.float32
        arch = (AutoConfig.from_pretrained(model_dir).architectures or ["Qwen2_5_VLForConditionalGeneration"])[0]
        if arch == "Qwen2VLForConditionalGeneration":
            from transformers import Qwen2VLForConditionalGeneration as Model
        else:
            from transformers import Qwen2_5_VLForConditionalGeneration as Model
        self.model = Model.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # batched generation continues every row from its last token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.images = AutoImageProcessor.from_pretrained(model_dir)
        self.merge = int(getattr(self.images, "merge_size", 2))
        self.batch_size, self.score, self.max_new_tokens = int(batch_size), score, int(max_new_tokens)
        if score not in ("generate", "logits"):
            raise ValueError(f"score must be 'generate' or 'logits', got {score!r}")
        digits = [self.tokenizer.convert_tokens_to_ids(str(k)) for k in range(1, 6)]
        self.digits = digits if all(isinstance(d, int) and d >= 0 for d in digits) else None

    def _inputs(self, images: np.ndarray, prompts: list[str], suffix: str = ""):
        from PIL import Image

        px = self.images(images=[Image.fromarray(im) for im in images], return_tensors="pt")
        pads = (px["image_grid_thw"].prod(-1) // self.merge ** 2).tolist()
        texts = [TEMPLATE.format(pads="<|image_pad|>" * int(n), question=QUESTION.format(prompt=str(p))) + suffix
                 for n, p in zip(pads, prompts, strict=True)]
        tok = self.tokenizer(texts, return_tensors="pt", padding=True)
        # 1 on the image tokens, 0 on text (what Qwen's processor returns): without it transformers
        # gives the image patches plain 1-D positions instead of M-RoPE's (t, h, w) grid, and the
        # real judge scores images it sees wrongly placed (Qwen2-VL refuses to run at all)
        mm_types = (tok["input_ids"] == self.model.config.image_token_id).long()
        return {**{k: v.to(self.device) for k, v in tok.items()}, "mm_token_type_ids": mm_types.to(self.device),
                "pixel_values": px["pixel_values"].to(self.device, self.dtype),
                "image_grid_thw": px["image_grid_thw"].to(self.device)}

    def answers(self, images: np.ndarray, prompts: list[str]) -> list[str]:
        """The judge's answers (greedy, batched)."""
        import torch

        out: list[str] = []
        with torch.no_grad():
            for a in range(0, len(images), self.batch_size):
                inputs = self._inputs(images[a:a + self.batch_size], prompts[a:a + self.batch_size])
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                out += self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    def _expected(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        if self.digits is None:
            raise ValueError("the judge's tokenizer has no single tokens '1'..'5'; use score: generate")
        out = []
        with torch.no_grad():
            for a in range(0, len(images), self.batch_size):
                inputs = self._inputs(images[a:a + self.batch_size], prompts[a:a + self.batch_size], "Final Score: ")
                logits = self.model(**inputs).logits[:, -1, :].float()        # (b, V) left padding: last = next
                p = torch.softmax(logits, -1)[:, self.digits]                  # (b, 5)
                k = torch.arange(1, 6, dtype=p.dtype, device=p.device)
                out.append(((p * k).sum(-1) / p.sum(-1)).double().cpu().numpy())
        return np.concatenate(out)

    def details(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        check_images(images, prompts)
        if self.score == "logits":
            scores = self._expected(np.asarray(images), list(prompts))
        else:
            scores = np.array([parse_score(t) for t in self.answers(np.asarray(images), list(prompts))], np.float64)
        return scores, {"parsed": np.isfinite(scores).astype(np.float64)}

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.details(images, prompts)[0]


def unifiedreward(**options) -> UnifiedReward:
    return UnifiedReward(**options)

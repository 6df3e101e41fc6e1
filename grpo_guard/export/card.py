"""The model card of an export: ``README.md`` with Hugging Face YAML front matter, and the
diffusers lines that load the export and reproduce ``grpo-guard sample --checkpoint``.

Pure functions of :class:`CardFacts` (no torch, no store): the facts are gathered elsewhere
(``grpo_guard.export.facts``) so a test can compare every field with the store.

The snippet reproduces our deterministic ODE sampler with the pipeline's own call: the same
scheduler table (the exported scheduler carries the run's shift; a LoRA export sets it on the
base's scheduler), the same initial noise (SD3: a CPU generator seeded with the seed, which
draws what ``seed_noise`` draws; FLUX: the packed noise passed as ``latents``, because the
pipeline would draw it unpacked), the same text length (``max_sequence_length``), CFG scale
(FLUX: the distilled guidance) and resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from grpo_guard.config import RunConfig

# Defaults of the pipelines' __call__ that the snippet need not repeat.
_PIPELINE_MAX_SEQ = {"toy": 256, "sd3": 256, "flux": 512}


@dataclass
class CardFacts:
    """Everything the card says, gathered from the store (or a checkpoint's sidecar)."""

    config: RunConfig
    step: int
    step_reason: str  # "best gold", "last", "chosen"
    weights: str  # "ema" / "raw"
    format: str  # "lora" / "pipeline"
    load_from: str  # the export's directory or hub repo id, as the snippet loads it
    base_model: str  # local dir or hub id of the base pipeline, as the snippet loads it
    run_id: int | None = None
    run_name: str = ""
    eval_at_step: dict[str, float] = field(default_factory=dict)  # {"eval/proxy": .., "eval/gold": ..}
    eval_at_base: dict[str, float] = field(default_factory=dict)  # the same at step 0
    alarm_onset: int | None = None
    prompt: str = "a photo"  # the snippet's example prompt and seed
    seed: int = 0
    max_sequence_length: int = 256
    scheduler_overrides: dict[str, Any] = field(default_factory=dict)
    latent_shape: tuple[int, ...] = ()
    license: str | None = None
    grid: str | None = None  # file name of the eval-sample grid beside README.md
    grid_caption: str = ""
    components: dict[str, str] = field(default_factory=dict)  # pipeline: component -> how
    trained_epochs: int | None = None  # the store's progress of the run (None: not known)
    run_status: str = ""
    history: bool = True  # False: only a checkpoint file was given (no eval series, alarm or samples)
    has_ema: bool | None = None  # whether the checkpoint holds EMA weights (None: as the config says)

    @property
    def hub_base(self) -> str | None:
        """The base model's hub id, when it is one (for ``base_model:``)."""
        import re

        m = self.config.model or ""
        return m if re.match(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$", m) and not m.startswith(".") else None


_REASONS = {"best gold": "the checkpoint with the highest gold score on the eval set",
            "last": "the run's latest checkpoint", "chosen": "picked by its step number"}


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.4f}"


def front_matter(f: CardFacts) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if f.hub_base:
        meta["base_model"] = f.hub_base
    meta["library_name"] = "diffusers"
    tags = ["text-to-image", "diffusers", "grpo-guard", f.config.algorithm.replace("_", "-"),
            "sd3" if f.config.backbone in ("sd3", "toy") else "flux"]
    if f.format == "lora":
        tags.append("lora")
    meta["tags"] = list(dict.fromkeys(tags))
    if f.license:
        meta["license"] = f.license
    return meta


def snippet(f: CardFacts) -> str:
    """Python that loads the export with plain diffusers and writes ``example.png``: the image
    ``grpo-guard sample --checkpoint CKPT --prompt PROMPT --seed SEED`` writes for that checkpoint."""
    c = f.config
    flux = c.backbone == "flux"
    lines = ["import torch", "from diffusers import DiffusionPipeline"
             + (", FlowMatchEulerDiscreteScheduler" if f.format == "lora" and f.scheduler_overrides else ""), ""]
    if f.format == "lora":
        # the base may keep fp16 text encoders beside an fp32 transformer (the shipped toy): one dtype
        lines.append(f"pipe = DiffusionPipeline.from_pretrained({f.base_model!r}, dtype=torch.float32)")
        lines.append(f"pipe.load_lora_weights({f.load_from!r})")
        if f.scheduler_overrides:
            kw = ", ".join(f"{k}={v!r}" for k, v in f.scheduler_overrides.items())
            lines.append(f"pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, {kw})")
    else:
        lines.append(f"pipe = DiffusionPipeline.from_pretrained({f.load_from!r})")
    args = [repr(f.prompt), f"num_inference_steps={c.eval_num_steps}", f"guidance_scale={c.cfg_scale!r}",
            f"height={c.resolution}", f"width={c.resolution}"]
    if f.max_sequence_length != _PIPELINE_MAX_SEQ[c.backbone]:
        args.append(f"max_sequence_length={f.max_sequence_length}")
    if flux:
        shape = (1, *f.latent_shape)
        args.append(f"latents=torch.randn({shape}, generator=torch.Generator().manual_seed({f.seed}))")
    else:
        args.append(f"generator=torch.Generator().manual_seed({f.seed})")
    lines.append(f"image = pipe({', '.join(args)}).images[0]")
    lines.append('image.save("example.png")')
    return "\n".join(lines) + "\n"


def _rewards(c: RunConfig) -> str:
    rows = [f"| {name} | {w:g} |" for name, w in c.rewards.items()]
    return "\n".join(["| proxy reward | weight |", "|---|---|", *rows])


def render(f: CardFacts) -> str:
    """The whole ``README.md``."""
    c = f.config
    title = f"{f.run_name or 'GRPO-Guard run'}" + (f" (run #{f.run_id})" if f.run_id is not None else "")
    algo = {"grpo_guard": "GRPO-Guard (Flow-GRPO with RatioNorm and gradient reweighting)",
            "flow_grpo": "Flow-GRPO", "dance_grpo": "DanceGRPO"}.get(c.algorithm, c.algorithm)
    settings = [f"dynamics `{c.dynamics}`", f"noise level {c.noise_level:g}", f"{c.num_steps} sampling steps",
                f"shift {c.shift:g}", f"CFG {c.cfg_scale:g}", f"clip range {c.clip_range:g}",
                f"KL β {c.kl_beta:g}", f"learning rate {c.learning_rate:g}",
                f"RatioNorm {'on' if c.ratio_norm else 'off'}", f"gradient reweighting {'on' if c.grad_reweight else 'off'}",
                f"group size {c.group_size}", f"seed {c.seed}"]
    adapter = (f"LoRA rank {c.lora_rank}, alpha {c.lora_alpha:g}, targets {', '.join(c.lora_targets)}"
               if c.lora_rank else "full fine-tuning of the transformer")
    base = f.hub_base or ("the GRPO-Guard toy base model (shipped in the `grpo-guard-studio` package)"
                          if c.backbone == "toy" and not c.model else f"`{c.model}`")
    what = {"lora": "a diffusers LoRA (`pytorch_lora_weights.safetensors`) for the base model",
            "pipeline": "a complete diffusers pipeline (the trained transformer"
                        + (" with the LoRA merged" if c.lora_rank else "") + ", float32 safetensors)"}[f.format]
    proxy_s, gold_s = f.eval_at_step.get("eval/proxy"), f.eval_at_step.get("eval/gold")
    proxy_0, gold_0 = f.eval_at_base.get("eval/proxy"), f.eval_at_base.get("eval/gold")
    alarm = (f"fired at epoch {f.alarm_onset} (proxy rising while gold falls)"
             + (": this step is after it" if f.step > f.alarm_onset else ": this step is before it"
                if f.step < f.alarm_onset else ": at this step")
             if f.alarm_onset is not None else "did not fire" if f.history else
             "unknown (only the checkpoint file was exported, without its run's history)")
    weights = ("the EMA weights (what evaluation sampled)" if f.weights == "ema" else
               "the raw weights" + (" (the run kept an EMA; raw was asked for)"
                                    if (c.ema if f.has_ema is None else f.has_ema) else " (the checkpoint keeps no EMA)"))
    first_ema = c.first_ema_epoch()
    if f.weights == "ema" and first_ema is not None and f.step < first_ema:
        # the EMA has not moved yet: saying "the trained model" here would not be true
        weights += (f", which at this step are still the base model's: the EMA updates every ema_every={c.ema_every} "
                    f"optimizer steps and an epoch takes {c.optimizer_steps_per_epoch()}, so it first moves after "
                    f"epoch {first_ema} (export --weights raw for the trained weights)")
    epochs = f"Epochs: {c.epochs}"
    if f.trained_epochs is not None and f.trained_epochs < c.epochs:
        epochs = (f"Epochs: {f.trained_epochs} trained of the {c.epochs} planned"
                  + (f" (run status: {f.run_status})" if f.run_status else ""))
    out = ["---", yaml.safe_dump(front_matter(f), sort_keys=False, allow_unicode=True).strip(), "---", "",
           f"# {title}", "",
           f"Fine-tuned from {base} with {algo}, exported by GRPO-Guard Studio as {what}.", "",
           "## Training", "",
           f"- Algorithm: {algo}; {', '.join(settings)}.",
           f"- Adapter: {adapter}.",
           f"- Training prompts: `{c.prompts}`; evaluation prompts: `{c.eval_prompts}` × seeds "
           f"{', '.join(str(s) for s in c.eval_seeds)}.",
           f"- {epochs}, {c.prompts_per_epoch * c.group_size} images per epoch "
           f"({c.prompts_per_epoch} prompts × group {c.group_size}), at {c.resolution} px.",
           f"- Gold evaluators (never optimised): {', '.join(c.gold) or 'none'}.", "",
           _rewards(c), "",
           "## This export", "",
           f"- Step (epoch) {f.step}, chosen as: **{f.step_reason}** ({_REASONS.get(f.step_reason, '')}); {weights}.",
           "",
           "| eval set | proxy | gold |", "|---|---|---|",
           f"| base model (step 0) | {_fmt(proxy_0)} | {_fmt(gold_0)} |",
           f"| this export (step {f.step}) | {_fmt(proxy_s)} | {_fmt(gold_s)} |", "",
           f"- Over-optimisation alarm: {alarm}.", ""]
    if f.components:
        out += ["- Components: " + ", ".join(f"{k} ({v})" for k, v in sorted(f.components.items()))
                + (". Linked ones were symlinks to the base model's folders where this was exported (a zip "
                   "download or a hub upload carries their files)." if "linked" in f.components.values() else "."),
                ""]
    if f.grid:
        out += [f"![eval samples at step {f.step}]({f.grid})", "", f.grid_caption, ""]
    else:
        out += [f"No eval samples are stored for step {f.step} (evaluation ran every {c.eval_every} epochs)."
                if f.history else "No eval samples came with the checkpoint file.", ""]
    out += ["## Use it with diffusers", "",
            "These lines give the same image as `grpo-guard sample --checkpoint` for this checkpoint "
            f"(prompt {f.prompt!r}, seed {f.seed}: deterministic Euler sampling as in evaluation):", "",
            "```python", snippet(f).rstrip("\n"), "```", "",
            "## Full run config", "", "```yaml", c.to_yaml().rstrip("\n"), "```", ""]
    return "\n".join(out)


def python_blocks(readme: str) -> list[str]:
    """The ```python blocks of a card (tests run them as written)."""
    blocks, cur = [], None
    for line in readme.splitlines():
        if cur is None and line.strip() == "```python":
            cur = []
        elif cur is not None and line.strip() == "```":
            blocks.append("\n".join(cur) + "\n")
            cur = None
        elif cur is not None:
            cur.append(line)
    return blocks

"""The card's pure parts: front matter, and the diffusers lines for each backbone and format
(what the fresh-process test runs for real)."""

from __future__ import annotations

import yaml

from grpo_guard.config import RunConfig
from grpo_guard.export.card import CardFacts, front_matter, python_blocks, render, snippet


def _facts(backbone: str, fmt: str, **kw) -> CardFacts:
    model = {"toy": "", "sd3": "stabilityai/stable-diffusion-3.5-medium", "flux": "/models/flux"}[backbone]
    cfg = RunConfig.from_dict({"backbone": backbone, "model": model, "lora_rank": 8 if fmt == "lora" else 0,
                               **({"resolution": 512} if backbone != "toy" else {})})
    base = {"flux": (1024, 64)}.get(backbone, ())
    return CardFacts(config=cfg, step=30, step_reason="best gold", weights="ema", format=fmt, load_from="/x/out",
                     base_model=model or "/pkg/toyworld/base", latent_shape=base, **kw)


def test_front_matter_names_a_hub_base_and_the_license():
    meta = front_matter(_facts("sd3", "lora", license="other"))
    assert meta["base_model"] == "stabilityai/stable-diffusion-3.5-medium" and meta["license"] == "other"
    assert meta["library_name"] == "diffusers" and "lora" in meta["tags"] and len(set(meta["tags"])) == len(meta["tags"])
    assert "base_model" not in front_matter(_facts("flux", "pipeline"))  # a local path is no hub id


def test_snippets_per_backbone_and_format():
    lora = snippet(_facts("sd3", "lora", scheduler_overrides={"shift": 3.0}, prompt="a cat", seed=7))
    assert "from_pretrained('stabilityai/stable-diffusion-3.5-medium', dtype=torch.float32)" in lora
    assert "pipe.load_lora_weights('/x/out')" in lora
    assert "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=3.0)" in lora
    assert "max_sequence_length" not in lora  # the pipeline's default 256 is the backbone's
    assert "generator=torch.Generator().manual_seed(7)" in lora and "height=512, width=512" in lora
    pipe = snippet(_facts("toy", "pipeline", max_sequence_length=16))
    assert "DiffusionPipeline.from_pretrained('/x/out')\n" in pipe and "dtype" not in pipe
    assert "load_lora_weights" not in pipe and "max_sequence_length=16" in pipe
    flux = snippet(_facts("flux", "pipeline", max_sequence_length=512))
    assert "latents=torch.randn((1, 1024, 64), generator=torch.Generator().manual_seed(0))" in flux
    assert "max_sequence_length" not in flux and "guidance_scale=" in flux


def test_render_holds_one_runnable_block_and_the_config():
    f = _facts("sd3", "lora", eval_at_step={"eval/proxy": 0.5}, eval_at_base={"eval/gold": float("nan")})
    text = render(f)
    assert text.startswith("---\n") and yaml.safe_load(text.split("---")[1])["library_name"] == "diffusers"
    (code,) = python_blocks(text)
    compile(code, "card", "exec")
    assert "| base model (step 0) | n/a | n/a |" in text and "| this export (step 30) | 0.5000 | n/a |" in text
    assert f.config.to_yaml().rstrip("\n") in text


def test_card_says_when_the_ema_weights_are_still_the_base_models():
    """ema_every larger than an epoch's optimizer steps: an early export's EMA weights are the
    base model's, and a card calling them the trained model would not tell the truth."""
    cfg = RunConfig.from_dict({"backbone": "toy", "lora_rank": 4, "ema_every": 8, "epochs": 10})
    first = cfg.first_ema_epoch()
    assert first is not None and first > 1
    facts = CardFacts(config=cfg, step=first - 1, step_reason="chosen", weights="ema", format="lora",
                      load_from="/o", base_model="/b")
    text = render(facts)
    assert "the EMA weights (what evaluation sampled), which at this step are still the base model's" in text
    assert f"so it first moves after epoch {first} (export --weights raw for the trained weights)" in text
    for step, weights in ((first, "ema"), (first - 1, "raw")):
        facts.step, facts.weights = step, weights
        assert "still the base model's" not in render(facts)


def test_raw_weights_say_whether_an_ema_was_there():
    """The card's reason for raw weights follows the checkpoint, not only the config's ``ema``."""
    cfg = RunConfig.from_dict({"backbone": "toy", "lora_rank": 4, "ema": True})
    facts = CardFacts(config=cfg, step=3, step_reason="chosen", weights="raw", format="lora", load_from="/o",
                      base_model="/b", has_ema=False)
    assert "the raw weights (the checkpoint keeps no EMA)" in render(facts)
    facts.has_ema = True
    assert "the raw weights (the run kept an EMA; raw was asked for)" in render(facts)

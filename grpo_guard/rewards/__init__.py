"""Reward and evaluator registry.

A reward scores decoded images: ``reward(images, prompts) -> np.ndarray`` of shape (B,), where
``images`` is uint8 (B, H, W, 3) and ``prompts`` a list of B strings (possibly ``str`` subclasses
carrying per-prompt metadata in ``.meta``, which GenEval reads). A reward may also offer
``details(images, prompts) -> (scores (B,), {key: (B,) array})``: evaluation then scores it through
that one call and logs each key's mean over its non-NaN images as ``eval/<name>/<key>`` (GenEval's
``strict`` and per-family accuracy). Each entry names the module
that builds it, so this registry (and config validation, and the app) loads no torch or model
weights until a reward is actually built. Rewards are chosen from this registry by name only:
a run config can never make a worker import arbitrary code.

Two more sources join the built-in entries below, the first time the registry is read
(:func:`load_extras`), in every process the same way (the app's form, config validation, the CLI,
the worker):

- plugins: installed packages that declare entry points in the group ``grpo_guard.rewards``
  (:mod:`grpo_guard.rewards.plugins`); a broken one is one warning naming it, never a crash;
- reward servers an operator declared in ``GG_REWARD_SERVERS`` or ``rewards.yaml`` in the data
  directory (:mod:`grpo_guard.rewards.servers`): a name bound to a URL, scored over HTTP
  (:mod:`grpo_guard.rewards.remote`). A run config names the reward, never the URL.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

from grpo_guard.rewards.registry import (  # noqa: F401  (the registry's public names live here)
    _EXTRAS,
    BACKBONES,
    BUILTIN,
    KINDS,
    OPTION_TYPES,
    PROBLEMS,
    REGISTRY,
    Reward,
    RewardSpec,
    register,
)


def load_extras(*, reload: bool = False) -> list[str]:
    """Join the plugins' and the declared servers' rewards to the registry (once per process;
    ``reload`` forgets the earlier ones and reads again, for tests and after installing a
    plugin). Never raises: each problem is logged as one warning and kept in ``PROBLEMS``;
    returns them."""
    with _EXTRAS["lock"]:  # other threads wait for the whole list; this one may re-enter (a plugin reading it)
        if _EXTRAS["loading"] or (_EXTRAS["loaded"] and not reload):
            return list(PROBLEMS)
        _EXTRAS["loading"] = True
        try:
            for name in _EXTRAS.get("names", ()):
                dict.pop(REGISTRY, name, None)
            PROBLEMS.clear()
            from grpo_guard.rewards import plugins, servers

            before = set(dict.keys(REGISTRY))
            PROBLEMS.extend(plugins.register_plugins())
            PROBLEMS.extend(servers.register_servers())
            _EXTRAS["names"] = set(dict.keys(REGISTRY)) - before
        finally:
            _EXTRAS["loading"], _EXTRAS["loaded"] = False, True
        return list(PROBLEMS)


def reward_plugin(*, kind: Literal["proxy", "gold", "any"] = "any", backbones: tuple[str, ...] = BACKBONES,
                  options: tuple[tuple[str, str], ...] = (), description: str = "") -> Callable[[Callable], Callable]:
    """Decorate a plugin's reward factory with its registry fields (the same as :func:`register`'s):
    ``@reward_plugin(kind="proxy", backbones=("toy",), options=(("scale", "float"),))``. The entry
    point ``name = "module:factory"`` in the group ``grpo_guard.rewards`` then registers it."""
    def mark(factory: Callable) -> Callable:
        factory.grpo_guard_reward = {"kind": kind, "backbones": tuple(backbones), "options": tuple(options),
                                     "description": description}
        return factory

    return mark


def check_option(name: str, option: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for option ``option`` of reward ``name``, else None
    (``None`` values mean "unset" and are always fine). Imports nothing heavy (config uses it)."""
    spec = REGISTRY.get(name)
    if spec is None:
        return f"unknown reward; registered: {', '.join(available())}"
    types = dict(spec.options)
    if option not in types:
        import difflib

        close = difflib.get_close_matches(option, list(types), n=1, cutoff=0.6)
        takes = f"{name} takes {', '.join(types)}" if types else f"{name} takes no options"
        return "unknown option" + (f"; did you mean '{close[0]}'?" if close else "") + f" ({takes})"
    if value is None:
        return None
    kind = types[option]
    ok = {"str": isinstance(value, str) and value.strip() != "",
          "int": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
          and abs(value) != float("inf"),
          "fp32|fp16": value in ("fp32", "fp16"),
          "flow_grpo|partial|strict": value in ("flow_grpo", "partial", "strict"),
          "generate|logits": value in ("generate", "logits")}[kind]
    if not ok:
        want = {"str": "a non-empty string", "int": "an integer >= 1", "float": "a finite number",
                "fp32|fp16": "'fp32' or 'fp16'",
                "flow_grpo|partial|strict": "'flow_grpo', 'partial' or 'strict'",
                "generate|logits": "'generate' or 'logits'"}[kind]
        return f"must be {want}, got {value!r}"
    return None


def available() -> list[str]:
    return sorted(REGISTRY)


def reward_rows() -> list[dict[str, Any]]:
    """One plain dict per registered reward, sorted by name: what ``grpo-guard rewards list``
    prints and the New-run form shows (torch-free)."""
    return [{"name": name, "kind": spec.kind, "backbones": list(spec.backbones),
             "options": {k: t for k, t in spec.options}, "source": spec.source,
             "description": spec.description} for name, spec in sorted(REGISTRY.items())]


def build_reward(name: str, **options: Any) -> Reward:
    """Instantiate a registered reward. Raises KeyError with the list of known names."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(available())}")
    if spec.server is not None:  # an operator-declared reward server: scored over HTTP
        from grpo_guard.rewards.remote import RemoteReward

        return RemoteReward(name, spec.server, **options)
    module, _, attr = spec.target.partition(":")
    factory: Callable[..., Reward] = getattr(importlib.import_module(module), attr)
    return factory(**options)


# ---- the registry ---------------------------------------------------------------------------
# Entries name their implementation by module path, so that config validation and the app can
# check reward names without importing anything heavy; keep this list in one place.

# Rewards for real images (SD3 / FLUX). Model-based ones load local weights only: the reward
# option `path` (run config `reward_options`), or GG_REWARD_<NAME>_PATH, or their standard hub id
# from the HF cache. `device` "cuda" is each data-parallel rank's own GPU.
_REAL = ("sd3", "flux")
_RUN = (("device", "str"), ("dtype", "fp32|fp16"), ("batch_size", "int"))
# OCR accuracy of the prompt's quoted text: 1 when read anywhere, else 1 − normalised edit distance (rapidocr).
register("ocr", "grpo_guard.rewards.ocr:ocr", "proxy", backbones=_REAL, options=(("min_score", "float"),))
# CLIP cosine(image, prompt); CLIP ViT-L/14 from option path, GG_REWARD_CLIPSCORE_PATH or the HF cache.
register("clipscore", "grpo_guard.rewards.clip:clipscore", "any",
         backbones=_REAL, options=(("path", "str"), *_RUN, ("scale", "float")))
# PickScore (≈21–23); PickScore_v1 from option path, GG_REWARD_PICKSCORE_PATH or the HF cache.
register("pickscore", "grpo_guard.rewards.pickscore:pickscore", "any",
         backbones=_REAL, options=(("path", "str"), ("processor_path", "str"), *_RUN, ("scale", "float")))
# HPSv2 (≈0.2–0.3); a transformers-format CLIP of the HPSv2 weights at option path or GG_REWARD_HPSV2_PATH.
register("hpsv2", "grpo_guard.rewards.hps:hpsv2", "gold",
         backbones=_REAL, options=(("path", "str"), ("processor_path", "str"), *_RUN))
# ImageReward (normalised); a transformers-format BLIP + MLP head at option path / head_path or
# GG_REWARD_IMAGEREWARD_PATH / _HEAD.
register("imagereward", "grpo_guard.rewards.imagereward:imagereward", "gold",
         backbones=_REAL, options=(("path", "str"), ("head_path", "str"), ("device", "str"), ("batch_size", "int")))
# LAION aesthetic predictor v2 (≈1–10): CLIP ViT-L/14 + the MLP head file at option head_path or
# GG_REWARD_AESTHETIC_HEAD.
register("aesthetic", "grpo_guard.rewards.aesthetic:aesthetic", "any",
         backbones=_REAL, options=(("path", "str"), ("head_path", "str"), *_RUN))
# GenEval composition (objects, counts, colours, positions) in-process: Mask2Former (detector_path,
# GG_REWARD_GENEVAL_DETECTOR_PATH or facebook/mask2former-swin-small-coco-instance from the HF cache)
# + CLIP ViT-L/14 colours (clip_path, GG_REWARD_GENEVAL_CLIP_PATH); prompts need GenEval metadata
# (geneval:* prompt sets, or option metadata). score: flow_grpo (Flow-GRPO's reward server, exactly),
# partial (ours, default) or strict (GenEval's 0/1); eval logs eval/geneval/overall, image_mean, per family.
register("geneval", "grpo_guard.rewards.geneval:geneval", "proxy",
         backbones=_REAL, options=(("detector_path", "str"), ("clip_path", "str"), ("metadata", "str"),
                                   ("score", "flow_grpo|partial|strict"), ("threshold", "float"),
                                   ("counting_threshold", "float"), ("max_objects", "int"),
                                   ("position_threshold", "float"), *_RUN))
# UnifiedReward (1–5), a Qwen2.5-VL judge of caption alignment and quality: UnifiedReward-qwen-7b from
# option path, GG_REWARD_UNIFIEDREWARD_PATH or the HF cache. score: generate (parse "Final Score: x" of
# its answer; none = NaN) or logits (expected value of the digit after "Final Score:"); eval also logs
# eval/unifiedreward/parsed.
register("unifiedreward", "grpo_guard.rewards.unifiedreward:unifiedreward", "any",
         backbones=_REAL, options=(("path", "str"), *_RUN, ("score", "generate|logits"), ("max_new_tokens", "int")))

# Toy world (grpo_guard/rewards/toy.py) and model-free JPEG size (grpo_guard/rewards/jpeg.py).
_TOY = ("toy",)
# Soft share of pixels in the prompt's foreground colour. Gameable: flooding the image raises it.
register("toy_fg_share", "grpo_guard.rewards.toy:fg_share", "proxy",
         backbones=_TOY, options=(("tau", "float"),))
# A small learned classifier's mean probability of the prompt's shape, fg and bg colour
# (legit headroom, hackable).
register("toy_classifier_confidence", "grpo_guard.rewards.toy:classifier_confidence", "proxy",
         backbones=_TOY, options=(("model_dir", "str"),))
# Mean of toy_shape, toy_fg_color, toy_bg_color by the analytic checker.
register("toy_alignment", "grpo_guard.rewards.toy:alignment", "gold", backbones=_TOY)
# 1 if the analytic checker finds the prompt's shape (bounding-box fill ratio), else 0.
register("toy_shape", "grpo_guard.rewards.toy:shape", "gold", backbones=_TOY)
# 1 if the most common non-background palette colour is the prompt's foreground colour.
register("toy_fg_color", "grpo_guard.rewards.toy:fg_color", "gold", backbones=_TOY)
# 1 if the most common palette colour on the border is the prompt's background colour.
register("toy_bg_color", "grpo_guard.rewards.toy:bg_color", "gold", backbones=_TOY)
# Learned fidelity model in [0, 1]: low for flooded, noisy, blurred or degenerate images.
register("toy_fidelity", "grpo_guard.rewards.toy:fidelity", "gold",
         backbones=_TOY, options=(("model_dir", "str"),))
# Soft share of pixels near some palette colour; drops for noise and off-palette artefacts.
register("toy_palette_purity", "grpo_guard.rewards.toy:palette_purity", "gold",
         backbones=_TOY, options=(("tau", "float"),))
# −kB of the image as JPEG at quality 95 (DDPO); favours flat, simple images.
register("jpeg_compressibility", "grpo_guard.rewards.jpeg:compressibility", "any",
         options=(("quality", "int"),))
# Control with no signal: a uniform score from a hash of the pixels. Shows how much gold falls from
# optimisation noise alone.
register("null_noise", "grpo_guard.rewards.null:null_noise", "any", options=(("seed", "int"),))
# +kB of the image as JPEG at quality 95 (DDPO); favours detail and noise.
register("jpeg_incompressibility", "grpo_guard.rewards.jpeg:incompressibility", "any",
         options=(("quality", "int"),))

BUILTIN.update(dict.keys(REGISTRY))
_EXTRAS["loader"] = load_extras

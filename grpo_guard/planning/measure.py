"""Memory and FLOPs of a run's GPU work, measured on fake tensors over the real architecture.

The transformer is built from its config on the meta device, given the run's LoRA (or made fully
trainable), precision and gradient checkpointing exactly as the adapters do, then materialised as
fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and storages, no
data). One chunk of the policy update then runs through the adapters' own code — the real
``SD3Backbone.velocity`` / ``FluxBackbone.velocity`` (CFG batching, autocast), ``sde_step`` and
``policy_loss`` — forward and backward, while :class:`LiveBytes` counts the bytes of every live
tensor storage (as ``torch.distributed._tools.mem_tracker.MemTracker`` does, whose per-module
bookkeeping made a 24-block model take over ten minutes here) and
``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs. Attention runs torch's
flash-attention kernel for CPU, which keeps no attention matrix, as a GPU's flash kernels.

Text encoders, VAE weights and reward models are counted as parameter bytes (built on the meta
device from their configs). Kernels and allocators differ between CPU and GPU: these are
estimates, validated in ``benchmarks/plan`` against measured peaks.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from grpo_guard.planning.spec import PipelineSpec

DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LiveBytes(TorchDispatchMode):
    """Bytes of distinct live tensor storages, by label, and their peak. Tensors made before the
    mode is entered count once :meth:`add` registers them; every op's outputs count under the
    current ``label`` until their storage is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.label = "activations"
        self.current: dict[str, int] = {}
        self.total = 0
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def add(self, t: torch.Tensor, label: str | None = None) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = int(st.nbytes())
        lab = label or self.label
        self._seen[st] = n
        self.current[lab] = self.current.get(lab, 0) + n
        self.total += n
        weakref.finalize(st, self._free, lab, n)
        if self.total > self.peak:
            self.peak = self.total
            self.at_peak = dict(self.current)

    def _free(self, label: str, n: int) -> None:
        self.current[label] -= n
        self.total -= n

    def reset_peak(self) -> None:
        self.peak, self.at_peak = self.total, dict(self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def weight_dtype(mixed_precision: str, device: str) -> torch.dtype:
    """The dtype the adapters load weights in: the autocast dtype on CUDA, float32 on a CPU."""
    return DTYPES[mixed_precision] if device == "cuda" else torch.float32


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"}


def meta_transformer(spec: PipelineSpec, config: Any, device: str) -> torch.nn.Module:
    """The transformer on the meta device with the run's LoRA / full fine-tuning and checkpointing,
    as ``SD3Backbone.add_lora`` and ``FluxBackbone.add_lora`` leave it."""
    import diffusers

    cls = getattr(diffusers, spec.transformer["_class_name"])
    wdt = weight_dtype(config.mixed_precision, device)
    with torch.device("meta"), _default_dtype(wdt):
        model = cls.from_config(_kwargs(spec.transformer))
    model.to(wdt).eval().requires_grad_(False)  # from_pretrained(dtype=...) casts buffers too
    if config.lora_rank == 0:
        model.to(torch.float32).requires_grad_(True)
    else:
        from peft import LoraConfig

        targets = list(config.lora_targets)
        if spec.pipeline == "FluxPipeline":
            from grpo_guard.models.flux import FLUX_LORA_TARGETS, resolve_lora_targets

            targets = resolve_lora_targets(model, targets, FLUX_LORA_TARGETS)
        model.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules=targets,
                                     init_lora_weights="gaussian"))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def component_parameters(spec: PipelineSpec) -> dict[str, int]:
    """Parameter counts of the frozen components (text encoders, VAE), built on the meta device."""
    import diffusers
    import transformers

    out: dict[str, int] = {}
    for name, cfg in spec.components.items():
        if name == "transformer":
            continue
        cls_name = cfg.get("_class_name", "")
        with torch.device("meta"):
            if hasattr(diffusers, cls_name) and name == "vae":
                module = getattr(diffusers, cls_name).from_config(_kwargs(cfg))
            elif hasattr(transformers, cls_name):
                cls = getattr(transformers, cls_name)
                module = cls(cls.config_class(**_kwargs(cfg)))
            else:
                continue
        out[name] = sum(p.numel() for p in module.parameters())
    return out


def fake_backbone(spec: PipelineSpec, config: Any, transformer: torch.nn.Module, text_len: int, device: str):
    """The real adapter class around ``transformer``, with only what ``velocity`` reads set: the
    unconditional embedding in its prompt cache, the autocast setting, FLUX's image ids."""
    from grpo_guard.models.flux import FluxBackbone
    from grpo_guard.models.sd3 import SD3Backbone

    cls = FluxBackbone if spec.pipeline == "FluxPipeline" else SD3Backbone
    bb = object.__new__(cls)
    bb.device = torch.device("cpu")
    bb.mixed_precision = config.mixed_precision
    bb.transformer = transformer
    tc = spec.transformer
    edt = weight_dtype(config.mixed_precision, device)  # the text encoders' dtype: their outputs'
    pe = torch.zeros(1, text_len, int(tc["joint_attention_dim"]), dtype=edt)
    pooled = torch.zeros(1, int(tc["pooled_projection_dim"]), dtype=edt)
    bb._cache = OrderedDict({"": (pe, pooled)})
    bb._max_cached = 2
    bb.lora_rank = config.lora_rank
    bb._reference_transformer = None
    if cls is FluxBackbone:
        bb.guidance_embeds = bool(tc.get("guidance_embeds", False))
        bb._img_ids = {}
    return bb


def latent_shape(spec: PipelineSpec, resolution: int) -> tuple[int, ...]:
    """Per-sample latent shape the adapter uses (SD3: (C, H/8, W/8); FLUX: packed (seq, 4C))."""
    vae = spec.components.get("vae", {})
    factor = 2 ** (len(vae.get("block_out_channels", [1, 1, 1, 1])) - 1)
    side = resolution // factor
    tc = spec.transformer
    if spec.pipeline == "FluxPipeline":
        return ((side // 2) ** 2, int(tc["in_channels"]))
    return (int(tc["in_channels"]), side, side)


@dataclass
class PassMeasure:
    """One measured pass: peak bytes over what was live before it, FLOPs."""

    transient: int          # peak live bytes during the pass minus the bytes live before it
    flops: int
    by_label: dict[str, int]


def measure_update_chunk(spec: PipelineSpec, config: Any, latent_rows: int, *, device: str = "cuda",
                         text_len: int | None = None) -> tuple[PassMeasure, dict[str, int]]:
    """Forward + backward of ``latent_rows`` rows of the policy update (each ×CFG branches in the
    transformer) on fake tensors. Returns the pass and the resident bytes it found (weights,
    trainable, gradients: the accumulated ones exist already, so accumulation adds nothing)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from grpo_guard.policy import policy_loss
    from grpo_guard.sde import sde_step

    text_len = text_len or spec.text_length("flux" if spec.pipeline == "FluxPipeline" else "sd3")
    model = meta_transformer(spec, config, device)
    shape = latent_shape(spec, config.resolution)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        tracker = LiveBytes()
        trainable = [p for p in model.parameters() if p.requires_grad]
        _add_module(tracker, model)
        for p in trainable:
            p.grad = torch.zeros_like(p)
            tracker.add(p.grad, "gradients")
        bb = fake_backbone(spec, config, model, text_len, device)
        for t in bb._cache[""]:
            tracker.add(t, "inputs")
        n = latent_rows
        x = torch.zeros(n, *shape)
        if config.gradient_checkpointing:
            # Non-reentrant checkpointing keeps every block's intermediates alive on fake tensors
            # (measured: 2.4x the real CPU peak on the toy); the reentrant form frees them as on real
            # tensors. It needs a block input that takes a gradient: the latents (one latent's grad).
            import functools

            from torch.utils.checkpoint import checkpoint

            model._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=True)
            x.requires_grad_(True)
        x_next, old_mean = torch.zeros_like(x), torch.zeros_like(x)
        sig, sig_next = torch.full((n,), 0.9), torch.full((n,), 0.8)
        old_lp, adv = torch.zeros(n), torch.ones(n)
        cond = _conditioning(bb, n)
        for t in (x, x_next, old_mean, sig, sig_next, old_lp, adv, *cond.values()):
            tracker.add(t, "inputs")
        before = tracker.total
        tracker.reset_peak()
        reweight = bool(config.grad_reweight) and config.delta != "none"
        with tracker, FlopCounterMode(display=False) as flops:
            model.train()
            v = bb.velocity(x, sig, cond, cfg_scale=config.cfg_scale, detach_uncond=config.detach_uncond)
            v.retain_grad()
            st = sde_step(v, x, sig, sig_next, noise_level=config.noise_level, dynamics=config.dynamics,
                          prev_sample=x_next, cps_logprob=config.cps_logprob, validate=False)
            ref_mean = None
            if config.kl_beta > 0 and config.lora_rank > 0:
                with torch.no_grad(), bb.reference():
                    v_ref = bb.velocity(x, sig, cond, cfg_scale=config.cfg_scale)
                    ref_mean = sde_step(v_ref, x, sig, sig_next, noise_level=config.noise_level,
                                        dynamics=config.dynamics, prev_sample=x_next, validate=False,
                                        cps_logprob=config.cps_logprob).mean
                    del v_ref
            out = policy_loss(st.log_prob, old_lp, adv, clip_range=config.clip_range, ratio_norm=config.ratio_norm,
                              grad_reweight=reweight, mean=st.mean, old_mean=old_mean, std=st.std, dt=st.dt,
                              delta=config.delta if reweight else "inv_dt", beta=st.beta, prev_sample=x_next,
                              kl_beta=config.kl_beta if ref_mean is not None else 0.0, ref_mean=ref_mean,
                              std_dev_t=st.std_dev_t, adv_clip=config.adv_clip, compute_stats=False, validate=False)
            out.loss.backward()
        resident = {"weights": tracker.current.get("weights", 0), "gradients": tracker.current.get("gradients", 0),
                    "trainable": sum(p.numel() * p.element_size() for p in trainable),
                    "trainable_numel": sum(p.numel() for p in trainable)}
        measure = PassMeasure(transient=tracker.peak - before, flops=int(flops.get_total_flops()),
                              by_label=dict(tracker.at_peak))
    return measure, resident


def measure_sampling_forward(spec: PipelineSpec, config: Any, latent_rows: int, *, device: str = "cuda",
                             text_len: int | None = None) -> PassMeasure:
    """One no-grad ``velocity`` call of the sampler over ``latent_rows`` trajectories."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    text_len = text_len or spec.text_length("flux" if spec.pipeline == "FluxPipeline" else "sd3")
    model = meta_transformer(spec, config, device)
    shape = latent_shape(spec, config.resolution)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        tracker = LiveBytes()
        _add_module(tracker, model)  # views of a weight share its storage: counted once, as weights
        bb = fake_backbone(spec, config, model, text_len, device)
        x = torch.zeros(latent_rows, *shape)
        sig = torch.full((latent_rows,), 0.9)
        cond = _conditioning(bb, latent_rows)
        before = tracker.total
        tracker.reset_peak()
        with tracker, FlopCounterMode(display=False) as flops, torch.no_grad():
            model.eval()
            bb.velocity(x, sig, cond, cfg_scale=config.cfg_scale)
        return PassMeasure(transient=tracker.peak - before, flops=int(flops.get_total_flops()),
                           by_label=dict(tracker.at_peak))


def measure_vae_decode(spec: PipelineSpec, config: Any, images: int, *, device: str = "cuda") -> int:
    """Peak bytes of one no-grad VAE decode of ``images`` latents (the adapters decode 32 at a time)."""
    import diffusers
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = spec.components.get("vae")
    if not cfg:
        return 0
    wdt = weight_dtype(config.mixed_precision, device)
    with torch.device("meta"), _default_dtype(wdt):
        vae = getattr(diffusers, cfg.get("_class_name", "AutoencoderKL")).from_config(_kwargs(cfg))
    vae.to(wdt).eval()
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    side = config.resolution // factor
    with FakeTensorMode(allow_non_fake_inputs=True):
        vae.to_empty(device="cpu")
        tracker = LiveBytes()
        _add_module(tracker, vae)
        before = tracker.total
        tracker.reset_peak()
        z = torch.zeros(images, int(cfg["latent_channels"]), side, side, dtype=wdt)
        with tracker, torch.no_grad():
            img = vae.decode(z, return_dict=False)[0].float()
            (img / 2 + 0.5).clamp(0, 1)
        return tracker.peak - before


def _conditioning(bb: Any, rows: int) -> dict[str, torch.Tensor]:
    """The fake backbone's cached prompt embeddings as ``rows`` rows of their own (what a batch of
    prompts holds), for one velocity call."""
    pe, pooled = bb._cache[""]
    return {"prompt_embeds": pe.expand(rows, *pe.shape[1:]).clone(),
            "pooled_prompt_embeds": pooled.expand(rows, *pooled.shape[1:]).clone()}


def _add_module(tracker: LiveBytes, module: torch.nn.Module) -> None:
    for t in [*module.parameters(), *module.buffers()]:
        tracker.add(t, "weights")

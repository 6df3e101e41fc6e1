"""Sharded weights (``parallelism: fsdp``): the trained transformer under FSDP2.

``shard_transformer`` applies ``torch.distributed.fsdp.fully_shard`` to every transformer block
(each ``*blocks`` ModuleList: SD3's ``transformer_blocks``, FLUX's two lists) and then to the
transformer itself, so a rank holds 1/world of every parameter, gradient and optimizer moment and
gathers one block at a time for its forward and backward. Only the transformer is sharded: the text
encoders and the VAE stay whole on every rank (frozen, used without gradients), and so does the KL
reference — LoRA's is the same sharded module with its adapters off, full fine-tuning's the frozen
copy ``add_lora(0)`` made before sharding.

Checkpoints keep the single-process format (``grpo_guard.training.checkpoint``): every rank takes part
in gathering each tensor whole and rank 0 alone keeps it (on the CPU), so ``grpo-guard sample``,
export, the UI and a resume on any number of ranks (sharded or not) read them unchanged. Loading
goes the other way: every rank reads the whole checkpoint and keeps its own shard of each tensor
(``like``), which needs no communication.

The optimizer is built over the sharded parameters (DTensors); ``clip_grad_norm_`` on their DTensor
gradients computes the norm over all shards (one all-reduce), and the EMA shadows are DTensors
sharded like the parameters they follow.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from grpo_guard.models.base import check_state_fits


def is_sharded(tensor: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def block_lists(transformer: torch.nn.Module) -> list[torch.nn.ModuleList]:
    """The transformer's lists of blocks (the FSDP units), in order."""
    return [m for name, m in transformer.named_children() if isinstance(m, torch.nn.ModuleList) and
            name.endswith("blocks")]


def fsdp_policies(mixed_precision: str, cpu_offload: bool, device_type: str) -> dict[str, Any]:
    """``fully_shard``'s keyword arguments: bf16 (fp16) gathered parameters and compute with fp32
    gradient reduction under ``mixed_precision`` bf16 (fp16), and CPU offload of the shards when
    asked — on a CUDA run only: on the CPU the shards live in CPU memory anyway."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32) if low else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if cpu_offload and device_type == "cuda" else OffloadPolicy()
    return {"mp_policy": mp, "offload_policy": offload}


def shard_transformer(backbone: Any, mixed_precision: str = "no", cpu_offload: bool = False) -> None:
    """Shard ``backbone.transformer`` over the initialised process group, in place: one FSDP unit per
    block, then the root (the embeddings, norms and projections outside the blocks). Call after
    ``add_lora`` (and after the ranks agreed on the initial weights), before building the optimizer."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kw = fsdp_policies(mixed_precision, cpu_offload, device_type)
    transformer = backbone.transformer
    blocks = [b for blocks in block_lists(transformer) for b in blocks]
    if not blocks:
        raise ValueError(f"parallelism fsdp: {type(transformer).__name__} has no list of transformer blocks to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, **kw)
    fully_shard(transformer, mesh=mesh, **kw)


# ---- whole tensors out (checkpoints), shards in (resume) ----------------------------------------
def full(tensor: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """``tensor`` whole on the CPU where ``keep`` (rank 0), else None. A DTensor is all-gathered (a
    collective: every rank calls this in the same order); a plain tensor is copied."""
    if is_sharded(tensor):
        if tensor.device.type == "cpu" and tensor.device_mesh.device_type == "cuda":  # CPU-offloaded shard
            from torch.distributed.tensor import DTensor

            tensor = DTensor.from_local(tensor.to_local().cuda(), tensor.device_mesh, tensor.placements)
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().clone() if keep else None


def like(whole: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``whole`` as ``ref`` holds it: this rank's shard (a DTensor placed like ``ref``, cut locally,
    no communication) when ``ref`` is sharded, else on ``ref``'s device and dtype."""
    if is_sharded(ref):
        from torch.distributed.tensor import distribute_tensor

        if is_sharded(whole):  # already a shard (a pre-update snapshot of this run)
            return whole.to(ref.dtype)
        whole = whole.to(ref.to_local().device, ref.dtype)
        return distribute_tensor(whole, ref.device_mesh, ref.placements, src_data_rank=None)
    return whole.to(ref.device, ref.dtype)


def _peft_keys(backbone: Any, names: list[str]) -> dict[str, str]:
    """module state-dict name -> the name ``trainable_state_dict`` gives it (peft's, for LoRA)."""
    if not backbone.lora_rank:
        return {n: n for n in names}
    from peft.utils import get_peft_model_state_dict

    marks = {n: torch.empty(0) for n in names}
    renamed = get_peft_model_state_dict(backbone.transformer, state_dict=dict(marks))
    back = {id(t): n for n, t in marks.items()}
    return {back[id(t)]: k for k, t in renamed.items()}


def _trainable_module_state(backbone: Any) -> dict[str, torch.Tensor]:
    """The transformer's own state-dict entries that ``trainable_state_dict`` covers (sharded)."""
    state = backbone.transformer.state_dict()
    if backbone.lora_rank:
        state = {k: v for k, v in state.items() if "lora_" in k}
    return state


def full_trainable_state(backbone: Any, keep: bool) -> dict[str, torch.Tensor]:
    """What ``backbone.trainable_state_dict()`` gives unsharded, gathered tensor by tensor (rank 0
    keeps it; the other ranks return {})."""
    state = _trainable_module_state(backbone)
    names = _peft_keys(backbone, list(state))
    out = {}
    for k, v in state.items():
        t = full(v, keep)
        if keep and k in names:
            out[names[k]] = t
    return out


def load_trainable_state(backbone: Any, saved: Mapping[str, torch.Tensor]) -> None:
    """Give the sharded transformer the whole ``saved`` trainable state (every rank reads the
    checkpoint and keeps its shard). A state of another shape raises ``ValueError`` as
    ``load_trainable_state_dict`` does."""
    state = _trainable_module_state(backbone)
    names = _peft_keys(backbone, list(state))
    mine = {names[k]: k for k in state if k in names}
    check_state_fits({k: tuple(state[m].shape) for k, m in mine.items()}, saved, backbone.lora_rank)
    live = dict(backbone.transformer.named_parameters())
    live.update(dict(backbone.transformer.named_buffers()))
    with torch.no_grad():
        for key, name in mine.items():
            target = live.get(name, state[name])
            target.copy_(like(saved[key], target))


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any] | None:
    """``optimizer.state_dict()`` with every sharded moment gathered whole: the format a single
    process writes (rank 0; None on the other ranks)."""
    sd = optimizer.state_dict()
    state = {}
    for idx in sorted(sd["state"]):
        state[idx] = {k: full(v, keep) if isinstance(v, torch.Tensor) and is_sharded(v) else v
                      for k, v in sd["state"][idx].items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])} if keep else None


def sharded_optimizer_state(saved: Mapping[str, Any], params: list[torch.nn.Parameter]) -> dict[str, Any]:
    """A whole optimizer state (single-process format) with each moment cut to the shard of its
    parameter, for ``optimizer.load_state_dict`` over sharded parameters."""
    state = {}
    for idx, entry in saved["state"].items():
        p = params[int(idx)]
        state[idx] = {k: like(v, p) if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape) and v.ndim
                      else v for k, v in entry.items()}
    return {"state": state, "param_groups": saved["param_groups"]}

"""Data parallel over prompt groups (``num_gpus`` > 1), launched through ``accelerate``.

The split (ALGORITHM.md §3.1, "groups are spread over GPUs, so all rewards and prompts are
gathered before normalising"):

1. every rank draws the same epoch prompts (same seed), then keeps its own groups,
   :func:`shard_indices` (whole groups per rank, so a group never straddles two ranks);
2. it samples and scores those groups locally;
3. :func:`gather_rewards` concatenates every rank's rewards (and group ids) in rank order, so
   every rank computes the same advantages over the full batch (global or group std);
4. :func:`local_slice` picks this rank's part of the advantages back out;
5. gradients are averaged by DDP / ``accelerator.backward`` as usual.

Sizes may differ per rank (K groups not divisible by the world size). With no process group (a
single process) every function degrades to the identity, so the single-GPU trainer can call them
unconditionally.

:func:`build_launch_command` gives the ``accelerate launch`` argv a worker runs for a multi-GPU
run (``python -m accelerate.commands.launch ... -m grpo_guard.cli train CONFIG``).
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from grpo_guard import metrics as M

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: the initialised torch.distributed group, else the
    ``RANK`` / ``WORLD_SIZE`` variables that ``accelerate launch`` (torchrun) sets, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Indices of the ``n`` prompt groups that ``rank`` samples: contiguous blocks whose sizes
    differ by at most one (ranks < n % world_size get one more). Concatenating the shards in rank
    order gives 0 … n−1, so gathered results are in the global group order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def shard_prompts(prompts: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's share of the epoch's prompt groups (see :func:`shard_indices`)."""
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    return [prompts[i] for i in shard_indices(len(prompts), rank, world_size)]


def _gather_1d(values: np.ndarray, dtype) -> tuple[np.ndarray, list[int]]:
    """All-gather a 1-D array of any per-rank length; returns (concatenation, sizes)."""
    import torch
    import torch.distributed as dist

    values = np.asarray(values, dtype=dtype).reshape(-1)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values.copy(), [values.shape[0]]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    world = dist.get_world_size()
    size = torch.tensor([values.shape[0]], dtype=torch.long, device=device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    longest = max(sizes)
    padded = torch.zeros(longest, dtype=torch.from_numpy(values[:0]).dtype, device=device)
    padded[: values.shape[0]] = torch.from_numpy(values).to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes, strict=True)])
    return out, sizes


def gather_rewards(rewards, group_ids=None):
    """Concatenate every rank's rewards (B_r,) in rank order: (Σ B_r,) float64.

    With ``group_ids`` (B_r,) int (global group indices) also returns the gathered group ids,
    and the per-rank sizes: ``(rewards, group_ids, sizes)``. Call on every rank (a collective)."""
    if hasattr(rewards, "detach"):
        rewards = rewards.detach().cpu().numpy()
    out, sizes = _gather_1d(rewards, np.float64)
    if group_ids is None:
        return out
    if hasattr(group_ids, "detach"):
        group_ids = group_ids.detach().cpu().numpy()
    ids, id_sizes = _gather_1d(group_ids, np.int64)
    if id_sizes != sizes:
        raise ValueError(f"rewards and group ids differ in length per rank: {sizes} vs {id_sizes}")
    return out, ids, sizes


def local_slice(sizes: Sequence[int], rank: int | None = None) -> slice:
    """The slice of a gathered (Σ B_r,) array that belongs to ``rank``."""
    if rank is None:
        rank = rank_and_world()[0]
    start = int(sum(sizes[:rank]))
    return slice(start, start + int(sizes[rank]))


def build_launch_command(config_path: str, num_gpus: int, gpu_ids: Sequence[int | str] | None = None, *,
                         overrides: Sequence[str] = (), main_process_port: int | None = None,
                         python: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    """The argv that runs ``grpo-guard train CONFIG`` on ``num_gpus`` GPUs.

    One GPU: ``python -m grpo_guard.cli train CONFIG`` (the caller sets CUDA_VISIBLE_DEVICES).
    More: ``python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1
    --gpu_ids 0,1 --mixed_precision no --dynamo_backend no [--main_process_port P] -m
    grpo_guard.cli train CONFIG [--set k=v ...] [extra_args]``. Mixed precision stays ``no`` for
    accelerate because the backbone autocasts itself (``mixed_precision`` in the run config).

    Raises ``ValueError`` when ``gpu_ids`` are not ``num_gpus`` distinct GPU indices or UUIDs."""
    tail = ["grpo_guard.cli", "train", str(config_path)]
    for item in overrides:
        tail += ["--set", item]
    return launch_module_command(tail + list(extra_args), num_gpus, gpu_ids,
                                 main_process_port=main_process_port, python=python)


def is_gpu_id(token: str) -> bool:
    """An index (``0``) or a UUID (``GPU-…`` / ``MIG-…``, as ``nvidia-smi -L`` prints and
    schedulers such as Slurm and Kubernetes put in ``CUDA_VISIBLE_DEVICES``)."""
    return token.isdigit() or (token.startswith(("GPU-", "MIG-")) and len(token) > 4)


def parse_gpu_ids(spec: str | None) -> list[str]:
    """The GPUs named in a ``CUDA_VISIBLE_DEVICES``-style list (``0,1``, ``0+1``, UUIDs), in order."""
    tokens = (t.strip() for t in (spec or "").replace("+", ",").replace(" ", ",").split(","))
    return [t for t in tokens if is_gpu_id(t)]


def _gpu_id(value: int | str) -> str:
    text = str(value).strip()
    if not is_gpu_id(text):
        raise ValueError(f"{value!r} is not a GPU index or UUID")
    return str(int(text)) if text.isdigit() else text


def launch_module_command(module_args: Sequence[str], num_gpus: int, gpu_ids: Sequence[int | str] | None = None, *,
                          main_process_port: int | None = None, python: str | None = None,
                          num_nodes: int = 1, node_rank: int = 0, main_process_ip: str | None = None) -> list[str]:
    """``python -m MODULE ARGS`` on one GPU, or under ``accelerate launch`` on ``num_gpus`` (see
    :func:`build_launch_command`); ``module_args`` = [module, *args]. The worker uses it with its
    own rank entry point (``worker.ranks``), which records to the store.

    ``num_nodes`` > 1: this machine's part of a multi-node group (accelerate's own multi-node
    launcher: ``--num_machines N --machine_rank R --main_process_ip ADDR --main_process_port P``,
    ``--num_processes`` counting every rank of every node); every node runs the same command
    with its own ``node_rank``, and the node of rank 0 listens at ``main_process_ip:port``."""
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ValueError(f"node_rank must be in [0, {num_nodes}) for num_nodes={num_nodes}, got {node_rank}")
    if num_nodes > 1 and (not main_process_ip or main_process_port is None):
        raise ValueError("a multi-node launch needs the address and port of node 0 (main_process_ip, main_process_port)")
    try:
        ids = [str(i) for i in range(num_gpus)] if gpu_ids is None else [_gpu_id(i) for i in gpu_ids]
    except ValueError:
        ids = []
    if len(ids) != num_gpus or len(set(ids)) != len(ids):
        raise ValueError(f"gpu_ids must be {num_gpus} distinct GPU indices or UUIDs, got {list(gpu_ids or [])}")
    python = python or sys.executable
    tail = ["-m", *module_args]
    if num_gpus == 1 and num_nodes == 1:
        return [python, *tail]
    # --gpu_ids becomes the ranks' CUDA_VISIBLE_DEVICES, so these are physical indices (or UUIDs).
    cmd = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_gpus * num_nodes),
           "--num_machines", str(num_nodes), "--gpu_ids", ",".join(ids), "--mixed_precision", "no",
           "--dynamo_backend", "no"]
    if num_nodes > 1:
        cmd += ["--machine_rank", str(int(node_rank)), "--main_process_ip", str(main_process_ip)]
    if main_process_port is not None:
        cmd += ["--main_process_port", str(int(main_process_port))]
    return cmd + tail


def in_launched_group() -> bool:
    """True inside a process started by ``accelerate launch`` / torchrun (WORLD_SIZE > 1 set), so
    ``grpo-guard train`` does not launch itself again."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on this host now (the rendezvous port of one launched run, so two runs on
    one machine do not both take accelerate's default 29500); ``host=""``: free on every interface
    (a gang's node 0, which other machines reach)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- the trainer's side of data parallel ------------------------------------------------------
def init_from_env() -> tuple[int, int]:
    """Join the process group a launcher described in the environment (``WORLD_SIZE`` > 1 and no
    group yet): NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is there, else gloo.
    Returns (rank, world size); a plain single process stays (0, 1) and initialises nothing."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # The other ranks wait in the next epoch's first collective while rank 0 evaluates and
        # checkpoints, which on a real model can outlast NCCL's default 10-minute timeout.
        timeout = datetime.timedelta(seconds=float(os.environ.get("GG_DIST_TIMEOUT_SECONDS", 4 * 3600)))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group("nccl", timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown() -> None:
    """Leave the process group together: a barrier, then destroy it. Without the barrier a rank
    that finished first exits and closes its gloo sockets while rank 0 still checkpoints, and
    gloo's reader thread on the other side can abort the process (SIGABRT) at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_device() -> str | None:
    """``cuda:LOCAL_RANK`` for a rank of a CUDA group, else None (the caller's default)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return f"cuda:{torch.cuda.current_device()}"
    return None


def _comm_device():
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (the stop request: the group stops together)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def max_over_ranks(n: int) -> int:
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(n)], dtype=torch.long, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_params(params: Sequence) -> None:
    """Copy rank 0's values into ``params`` on every rank (identical start, whatever each rank's
    own initialisation did)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


_BUCKET_ELEMENTS = 1 << 26


def all_reduce_grads(params: Sequence) -> None:
    """Average the gradients of ``params`` over the ranks, in one flat buffer (what DDP does,
    without wrapping the peft model). A rank whose micro-batches were all padding has no grads:
    it contributes zeros. Every rank then holds the same gradient, so clipping and AdamW take the
    same step and the weights stay identical."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    # Buckets of at most ~256 MB (fp32), so full fine-tuning does not copy every gradient at once.
    bucket: list = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p)
        size += p.numel()
        if size >= _BUCKET_ELEMENTS or i == len(params) - 1:
            grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in bucket]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= world
            offset = 0
            with torch.no_grad():
                for q in bucket:
                    n = q.numel()
                    q.grad = flat[offset:offset + n].view_as(q).clone()
                    offset += n
            bucket, size = [], 0


def merge_update_stats(scalars: dict[str, float], step_stats: dict[int, dict[str, float]],
                       sigma: dict[int, tuple[float, float]]):
    """The epoch's update statistics over all ranks (each rank computed them over its own rows):
    scalars are averaged, except counts (summed) and the on-policy check (max); per-step
    statistics are averaged weighted by their row counts. Returns (scalars, step_stats, sigma)."""
    import math

    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (scalars, step_stats, sigma))
    summed, maxed = {M.MICRO_BATCHES, M.BACKWARD_ROWS}, {M.ONPOLICY_MAX_ABS_LOGR}
    out_s: dict[str, float] = {}
    for k in scalars:
        vals = [p[0][k] for p in parts if k in p[0] and math.isfinite(p[0][k])]
        if not vals:
            out_s[k] = scalars[k]
        elif k in summed:
            out_s[k] = float(sum(vals))
        elif k in maxed:
            out_s[k] = float(max(vals))
        else:
            out_s[k] = float(sum(vals) / len(vals))
    out_j: dict[int, dict[str, float]] = {}
    out_sigma: dict[int, tuple[float, float]] = {}
    for _, stats, sig in parts:
        out_sigma.update(sig)
        for j, row in stats.items():
            out_j.setdefault(j, {})
            w = row.get(M.ROWS, 1.0)
            for k, v in row.items():
                if k == M.ROWS or not math.isfinite(v):
                    continue
                acc = out_j[j].setdefault(k, [0.0, 0.0])
                acc[0] += w * v
                acc[1] += w
            out_j[j].setdefault(M.ROWS, [0.0, 0.0])[0] += w
    merged = {j: {k: (a[0] if k == M.ROWS else a[0] / a[1]) for k, a in row.items() if k == M.ROWS or a[1] > 0}
              for j, row in out_j.items()}
    return out_s, merged, out_sigma

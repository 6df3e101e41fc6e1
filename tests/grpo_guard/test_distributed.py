"""Data parallel over prompt groups: sharding, reward gather (world size 1 and a real 2-process
gloo group on CPU) and the ``accelerate launch`` command."""

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_guard.training.distributed import (
    build_launch_command,
    gather_rewards,
    local_slice,
    rank_and_world,
    shard_indices,
    shard_prompts,
)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 48])
@pytest.mark.parametrize("world", [1, 2, 3, 16])
def test_shards_partition_the_groups_in_order(n, world):
    """Concatenated in rank order the shards are 0..n-1, sizes differ by at most one."""
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sum(shards, []) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_is_the_identity():
    assert rank_and_world() == (0, 1)
    r = np.array([0.1, 0.5, 0.2])
    assert np.array_equal(gather_rewards(r), r)
    out, ids, sizes = gather_rewards(torch.tensor(r), group_ids=torch.tensor([0, 0, 1]))
    assert np.array_equal(out, r) and ids.tolist() == [0, 0, 1] and sizes == [3]
    assert local_slice(sizes) == slice(0, 3)
    assert shard_prompts(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="not in a world"):
        shard_indices(4, 2, 2)


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from grpo_guard.policy import group_advantages

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        groups = shard_indices(5, rank, world)               # 5 groups of 2 over 2 ranks: 3 + 2
        assert rank_and_world() == (rank, world)
        ids = np.repeat(groups, 2)
        rewards = ids * 10.0 + np.tile([0.0, 1.0], len(groups))
        all_r, all_ids, sizes = gather_rewards(rewards, group_ids=ids)
        adv = group_advantages(torch.from_numpy(all_r), torch.from_numpy(all_ids), std_scope="global")
        mine = adv[local_slice(sizes, rank)]
        np.save(os.path.join(out_dir, f"r{rank}.npy"), np.concatenate([all_r, all_ids, sizes, mine.numpy()]))
    finally:
        dist.destroy_process_group()


def test_gloo_two_processes_gather_rewards_before_advantages():
    """Two CPU processes with uneven shards (6 and 4 samples) gather identical global rewards in
    group order, and each gets its own slice of the (global) advantages back."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        r0, r1 = np.load(os.path.join(d, "r0.npy")), np.load(os.path.join(d, "r1.npy"))
    expect = np.array([0, 1, 10, 11, 20, 21, 30, 31, 40, 41], dtype=float)
    for r in (r0, r1):
        assert np.array_equal(r[:10], expect), "gathered rewards are not in global group order"
        assert np.array_equal(r[10:20], np.repeat(np.arange(5), 2))
        assert r[20:22].tolist() == [6, 4]
    assert r0[22:].shape == (6,) and r1[22:].shape == (4,)
    assert np.allclose(np.concatenate([r0[22:], r1[22:]]).reshape(5, 2).sum(1), 0), "group means not removed"


def test_launch_command_for_several_gpus_parses_with_accelerate():
    from accelerate.commands.launch import launch_command_parser

    cmd = build_launch_command("run.yaml", 2, [2, 3], overrides=["epochs=3"], main_process_port=29555)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.multi_gpu and args.num_processes == 2 and args.gpu_ids == "2,3" and args.module
    assert args.main_process_port == 29555
    assert args.training_script == "grpo_guard.cli"
    assert args.training_script_args == ["train", "run.yaml", "--set", "epochs=3"]


def test_launch_command_for_one_gpu_and_bad_ids():
    assert build_launch_command("c.yaml", 1, python="py") == ["py", "-m", "grpo_guard.cli", "train", "c.yaml"]
    for n, ids in [(2, [0]), (2, [1, 1]), (2, [0, -1]), (0, None), (2, [0, "GPU-"]), (2, ["x", "y"])]:
        with pytest.raises(ValueError):
            build_launch_command("c.yaml", n, ids)
    cmd = build_launch_command("c.yaml", 2, ["MIG-a1", "GPU-b2"], python="py")
    assert cmd[cmd.index("--gpu_ids") + 1] == "MIG-a1,GPU-b2"


def test_gpu_lists_parse_indices_plus_and_uuids():
    from grpo_guard.training.distributed import parse_gpu_ids

    assert parse_gpu_ids("0,1") == ["0", "1"] and parse_gpu_ids("2+3") == ["2", "3"] and parse_gpu_ids(None) == []
    assert parse_gpu_ids("GPU-abc, MIG-def") == ["GPU-abc", "MIG-def"]


def test_module_command_extra_args_and_launched_group_detection(monkeypatch):
    from grpo_guard.config import ConfigError, RunConfig
    from grpo_guard.training.distributed import in_launched_group, launch_module_command

    cmd = build_launch_command("c.yaml", 2, overrides=["seed=1"], extra_args=["--out", "runs/x"], python="py")
    assert cmd[-7:] == ["grpo_guard.cli", "train", "c.yaml", "--set", "seed=1", "--out", "runs/x"]
    assert launch_module_command(["worker.ranks", "7"], 1, python="py") == ["py", "-m", "worker.ranks", "7"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not in_launched_group()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_launched_group()
    with pytest.raises(ConfigError, match=r"prompts_per_epoch: must be at least num_nodes × num_gpus \(4\)"):
        RunConfig.from_dict({"num_gpus": 4, "prompts_per_epoch": 2})
    with pytest.raises(ConfigError, match=r"at least num_nodes × num_gpus \(6\)"):
        RunConfig.from_dict({"num_nodes": 3, "num_gpus": 2, "prompts_per_epoch": 5})
    with pytest.raises(ConfigError, match="fsdp_cpu_offload: offloads FSDP shards"):
        RunConfig.from_dict({"fsdp_cpu_offload": True})


def test_a_multi_node_command_is_accelerates_own_multi_node_launch():
    from accelerate.commands.launch import launch_command_parser

    from grpo_guard.training.distributed import launch_module_command

    cmd = launch_module_command(["worker.ranks", "7"], 2, [0, 1], num_nodes=2, node_rank=1,
                                main_process_ip="10.0.0.5", main_process_port=29511, python="py")
    args = launch_command_parser().parse_args(cmd[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank) == (4, 2, 1)
    assert (args.main_process_ip, args.main_process_port, args.gpu_ids) == ("10.0.0.5", 29511, "0,1")
    assert cmd[-3:] == ["-m", "worker.ranks", "7"]
    # one GPU per node still goes through the launcher (the ranks must meet)
    assert "accelerate.commands.launch" in launch_module_command(["m"], 1, num_nodes=2, main_process_ip="h",
                                                                 main_process_port=1, python="py")
    with pytest.raises(ValueError, match="node_rank must be in"):
        launch_module_command(["m"], 1, num_nodes=2, node_rank=2, main_process_ip="h", main_process_port=1)
    with pytest.raises(ValueError, match="needs the address and port of node 0"):
        launch_module_command(["m"], 1, num_nodes=2)


def test_a_single_process_refuses_num_gpus_2():
    """Without a launched group the trainer says how to run a multi-GPU config, before loading."""
    from grpo_guard.config import RunConfig
    from grpo_guard.training.recording import MemoryControl, MemoryRecorder
    from grpo_guard.training.trainer import train

    with pytest.raises(ValueError, match="grpo-guard train CONFIG"):
        train(RunConfig.from_dict({"num_gpus": 2}), MemoryRecorder(), MemoryControl())


def _grad_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    import grpo_guard.training.distributed as ddp

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ddp._BUCKET_ELEMENTS = 5  # several buckets for these 4 tensors
        params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 4, 1, 6)]
        for i, p in enumerate(params):
            if not (rank == 1 and i == 2):  # rank 1 has no gradient for one tensor: it counts as zeros
                p.grad = torch.full_like(p, float(rank + 1) * (i + 1))
        ddp.all_reduce_grads(params)
        torch.save([p.grad for p in params], os.path.join(out_dir, f"g{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gradients_are_averaged_over_ranks_in_buckets():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_grad_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        g0, g1 = (torch.load(os.path.join(d, f"g{r}.pt")) for r in range(2))
    for i, (a, b) in enumerate(zip(g0, g1, strict=True)):
        expect = (1 + (0 if i == 2 else 2)) * (i + 1) / 2
        assert torch.equal(a, b) and torch.allclose(a, torch.full_like(a, expect)), (i, a)


def _shutdown_worker(rank, world, init_file, out_dir):
    import time

    import torch.distributed as dist

    import grpo_guard.training.distributed as ddp

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank == 0:
        time.sleep(1.5)  # rank 0 still writing its last checkpoint
    start = time.monotonic()
    ddp.shutdown()
    with open(os.path.join(out_dir, f"s{rank}.txt"), "w") as fh:
        fh.write(f"{time.monotonic() - start} {int(dist.is_initialized())}")


def test_shutdown_waits_for_the_slowest_rank_and_leaves_no_group():
    """The rank that finishes first must not exit with the group still open while rank 0 works:
    gloo then aborts one of the processes at exit (SIGABRT, seen in CI). ``shutdown`` holds it in a
    barrier until rank 0 arrives, then destroys the group on both."""
    import torch.multiprocessing as mp

    from grpo_guard.training.distributed import shutdown

    shutdown()  # no group: nothing to do
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_shutdown_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        (w0, g0), (w1, g1) = (Path(d, f"s{r}.txt").read_text().split() for r in range(2))
    assert float(w1) > 1.0, "rank 1 left before rank 0 reached the end"
    assert g0 == g1 == "0"

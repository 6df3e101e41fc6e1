"""Sharded weights (``parallelism: fsdp``) in a real 2-process gloo group on CPU, on a tiny random SD3
pipeline (``tiny_sd3_pipeline_dir``): FSDP2 over the transformer's blocks and root, for LoRA (KL to
the base model with the adapters off, through the sharded module) and for full fine-tuning (with
gradient checkpointing; the KL reference is the frozen unsharded copy), with the EMA.

One spawn of two ranks runs every sharded case in turn (launching processes and importing torch,
diffusers and peft costs seconds, once); the single-process runs are in the test's own process.
What is compared are the checkpoints rank 0 wrote, in the single-process format: the trainable
weights, the EMA and AdamW's moments.

Why the 2-rank run equals the single process only to rtol 1e-5 (tolerances in ``_assert_same``), not
bit for bit: each rank's loss is the mean over its own rows and FSDP averages the two gradients
(reduce-scatter), while one process takes the mean over all rows in one batch of twice the size, so
the float sums run in another order (~1e-7 relative; measured: weights ≤ 4e-8 apart in absolute
terms after moving ~1e-3). Against data parallel on the same 2 ranks the checkpoints are equal bit
for bit (the third test). ``adam_eps`` is 1e-4 here so that AdamW does not blow that rounding noise in
gradients that are ~0 up into steps of the learning rate's size (what the data-parallel test has
to allow for with eps 1e-8), and the advantages use each group's own std (``std_scope: group``:
±1 in a group of 2): the random tiny model's rewards lie ~1e-6 apart, so with flow_grpo's global
std a flipped uint8 rounding in one image (1e-7 in its reward) moved every advantage by percents
and, now and then, the weights by more than the tolerance."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.training.checkpoint import checkpoint_path, load_checkpoint
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from tests.grpo_guard.controls import InterruptIn, StopAfter, StopFileAt

BASE = dict(backbone="sd3", resolution=32, algorithm="flow_grpo", kl_beta=0.04, std_scope="group", group_size=2,
            prompts_per_epoch=2,
            num_steps=3, eval_num_steps=2, sample_batch_size=2, train_batch_size=4, epochs=2, seed=3,
            learning_rate=1e-3, adam_eps=1e-4, ema=True, ema_every=1, checkpoint_every=1, keep_checkpoints=5,
            prompts=["a red circle on a blue background", "a green square on a white background"],
            eval_prompts=["a red circle on a blue background"], eval_seeds=[0], eval_every=1, gold=[])
LORA = dict(lora_rank=4, lora_alpha=8.0)
FULL = dict(lora_rank=0, gradient_checkpointing=True)


class HalfFlat:
    """A proxy reward that is constant for the second prompt: its group has zero advantages, so in a
    2-rank run one rank has nothing to train and must still join every sharded forward."""

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        means = images.reshape(len(images), -1).mean(1) / 255.0
        return np.where([p.startswith("a green") for p in prompts], 0.5, means)


def _control(spec: list | None, rank: int, out: str):
    """None: run to the end; ["stop", k]: the user's stop after epoch k; ["record", k]: a worker's
    shutdown reported to rank 0 once epoch k is recorded; ["file", k]: a stop file every rank finds
    while sampling epoch k + 1 (rank 0 creates it at that epoch's stop poll)."""
    if spec is None:
        return MemoryControl()
    kind, k = spec
    if kind == "stop":
        return StopAfter(k)
    if kind == "record":
        return InterruptIn(k, after_record=True) if rank == 0 else MemoryControl()
    return StopFileAt(os.path.join(out, "stop"), create_at=k + 1 if rank == 0 else None)


def _train(cfg: RunConfig, out: str, resume_from: str | None = None, rewards=None, control=None,
           stopped_at: int | None = None) -> str:
    from grpo_guard.training.trainer import train

    rec = MemoryRecorder(out)
    control = control or MemoryControl()
    if isinstance(control, InterruptIn):
        control.recorder = rec
    res = train(cfg, rec, control, resume_from=resume_from, device="cpu", rewards=rewards)
    assert (res.status, res.step) == (("succeeded", cfg.epochs) if stopped_at is None else ("cancelled", stopped_at)), res
    return out


def _rank(rank: int, init_file: str, out: str, jobs_json: str) -> None:
    import faulthandler

    import torch.distributed as dist

    faulthandler.enable()  # a crash of a rank prints its Python stack, not only "SIGSEGV"

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for name, cfg, resume, flat, spec in json.loads(jobs_json):
            _train(RunConfig.from_dict(cfg), os.path.join(out, name, f"rank{rank}"), resume,
                   {"flat": HalfFlat()} if flat else None, _control(spec, rank, out), spec and spec[1])
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(jobs: list, out: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(os.path.join(out, "init"), out, json.dumps(jobs)), nprocs=2, join=True)


def _assert_same(a: str, b: str) -> None:
    """The checkpoints ``a`` and ``b``: equal trainable weights and EMA (rtol 1e-5; atol 1e-6, where
    the weights move by ~1e-3 in these 2 epochs and LoRA's B starts at 0, so that entries near zero
    have no meaningful relative error) and AdamW moments (rtol 1e-4, atol 1e-3 of the tensor's
    largest entry: first moments ≤ 3e-4 here, second ≤ 6e-9)."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step and sorted(ca.trainable) == sorted(cb.trainable)
    for k in ca.trainable:
        torch.testing.assert_close(ca.trainable[k], cb.trainable[k], rtol=1e-5, atol=1e-6, msg=k)
    for x, y in zip(ca.ema, cb.ema, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    sa, sb = ca.optimizer["state"], cb.optimizer["state"]
    assert sorted(sa) == sorted(sb) and ca.optimizer["param_groups"] == cb.optimizer["param_groups"]
    for i in sa:
        assert torch.equal(sa[i]["step"], sb[i]["step"])
        for key, floor in (("exp_avg", 1e-8), ("exp_avg_sq", 1e-12)):
            # A moment entry near zero is a near-cancelling sum of gradients: its absolute error
            # follows the tensor's scale, not its own (1 in ~6 runs missed a bare atol 1e-8).
            scale = float(sb[i][key].abs().max())
            torch.testing.assert_close(sa[i][key], sb[i][key], rtol=1e-4, atol=max(floor, 1e-3 * scale),
                                       msg=lambda m, i=i, key=key, scale=scale: f"{i}/{key} (max |x| {scale:.3g}): {m}")


def _moved(path: str, base: str) -> float:
    """How far the weights of checkpoint ``path`` moved from those of ``base``."""
    a, b = load_checkpoint(path).trainable, load_checkpoint(base).trainable
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process runs here, then every 2-rank run in one spawn; returns (configs, paths)."""
    from grpo_guard.models.testing import tiny_sd3_pipeline_dir

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fsdp")
    model = tiny_sd3_pipeline_dir(root)
    cfg = {k: RunConfig.from_dict({**BASE, **arch, "model": model}) for k, arch in (("lora", LORA), ("full", FULL))}
    flat = cfg["lora"].with_overrides({"rewards": {"flat": 1.0}, "epochs": 1, "train_batch_size": 1,
                                       "gradient_accumulation_steps": 2, "update_rows_per_forward": 2})
    for k in ("lora", "full"):
        _train(cfg[k], str(root / f"single-{k}"))
    sharded = {k: c.with_overrides({"num_gpus": 2, "parallelism": "fsdp"}) for k, c in cfg.items()}
    single_ckpt1 = checkpoint_path(str(root / "single-lora"), 1)
    jobs = [("lora", sharded["lora"].to_dict(), None, False, None),
            ("full", sharded["full"].to_dict(), None, False, None),
            ("lora-from-single", sharded["lora"].to_dict(), single_ckpt1, False, None),
            ("flat-ddp", flat.with_overrides({"num_gpus": 2}).to_dict(), None, True, None),
            ("flat-fsdp", flat.with_overrides({"num_gpus": 2, "parallelism": "fsdp"}).to_dict(), None, True, None),
            ("full-stop", sharded["full"].with_overrides({"checkpoint_every": 100}).to_dict(), None, False, ["stop", 1]),
            ("full-record", sharded["full"].with_overrides({"checkpoint_every": 100}).to_dict(), None, False,
             ["record", 1]),
            ("full-file", sharded["full"].with_overrides({"checkpoint_every": 100}).to_dict(), None, False, ["file", 1])]
    _spawn(jobs, str(root))
    return cfg, root


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_two_sharded_ranks_equal_one_process(runs, kind):
    """After 2 epochs the checkpoint rank 0 gathered and wrote equals the single process's (weights,
    EMA, AdamW moments), in the same format; rank 1 wrote nothing; the weights did move."""
    cfg, root = runs
    single = checkpoint_path(str(root / f"single-{kind}"), 2)
    sharded = checkpoint_path(str(root / kind / "rank0"), 2)
    _assert_same(sharded, single)
    assert not os.path.exists(root / kind / "rank1")
    assert _moved(sharded, checkpoint_path(str(root / f"single-{kind}"), 1)) > 1e-5
    ck = load_checkpoint(sharded)
    assert ck.config.parallelism == "fsdp" and ck.config.num_gpus == 2
    # The evaluations (every rank samples the eval set with the sharded EMA weights; rank 0 scores).
    # Images are rounded to uint8 before the reward, so weights ~1e-8 apart can flip a pixel's
    # rounding: seen 2.3e-5 relative, hence 2e-4 here.
    history = load_checkpoint(single).trainer["history"]
    assert ck.trainer["history"]["step"] == history["step"] == [0, 1, 2]
    np.testing.assert_allclose(ck.trainer["history"]["proxy"], history["proxy"], rtol=2e-4)
    if kind == "full":  # the whole transformer, every tensor whole
        assert len(ck.trainable) == len(load_checkpoint(single).trainable) > 20


def test_sharded_checkpoint_resumes_on_one_process_and_back(runs, tmp_path):
    """The 2-rank checkpoint of epoch 1 resumes in a single process (num_gpus 1) to the same epoch-2
    state as both uninterrupted runs; the single process's epoch-1 checkpoint resumed on 2 sharded
    ranks does too."""
    cfg, root = runs
    one = cfg["lora"].with_overrides({"parallelism": "fsdp"})  # one process: nothing to shard
    resumed = _train(one, str(tmp_path / "resumed"), checkpoint_path(str(root / "lora" / "rank0"), 1))
    _assert_same(checkpoint_path(resumed, 2), checkpoint_path(str(root / "single-lora"), 2))
    _assert_same(checkpoint_path(str(root / "lora-from-single" / "rank0"), 2),
                 checkpoint_path(str(root / "lora" / "rank0"), 2))


def test_a_rank_with_nothing_to_train_still_steps_with_the_others(runs):
    """One rank's group has zero advantages (its micro-batches are empty) while the other trains 2
    micro-batches per optimizer step (accumulation), each in chunks of one row: under fsdp the idle
    rank runs its share of every sharded forward and backward on a zero-weighted row, and the result
    is exactly data parallel's (whose empty rank adds zero gradients), not the single process's."""
    _, root = runs
    a = load_checkpoint(checkpoint_path(str(root / "flat-fsdp" / "rank0"), 1))
    b = load_checkpoint(checkpoint_path(str(root / "flat-ddp" / "rank0"), 1))
    assert sorted(a.trainable) == sorted(b.trainable)
    assert all(torch.equal(a.trainable[k], b.trainable[k]) for k in a.trainable)
    assert all(torch.equal(x, y) for x, y in zip(a.ema, b.ema, strict=True))
    assert all(torch.equal(a.optimizer["state"][i][k], b.optimizer["state"][i][k])
               for i in a.optimizer["state"] for k in ("exp_avg", "exp_avg_sq", "step"))


def test_a_stop_request_ends_both_ranks_with_one_gathered_checkpoint(runs):
    """Rank 0's stop request after epoch 1 (broadcast) ends both ranks; both gather the checkpoint
    of epoch 1 (its cadence, 100, would write none), which rank 0 alone writes and which equals the
    single process's epoch 1."""
    _, root = runs
    assert sorted(os.listdir(root / "full-stop" / "rank0")) == ["ckpt_000001.json", "ckpt_000001.pt"]
    assert not os.path.exists(root / "full-stop" / "rank1")
    _assert_same(checkpoint_path(str(root / "full-stop" / "rank0"), 1), checkpoint_path(str(root / "single-full"), 1))


@pytest.mark.parametrize("name", ["full-record", "full-file"])
def test_a_shutdown_ends_both_ranks_with_one_gathered_checkpoint(runs, name):
    """full-record: a worker's shutdown reaches rank 0's control once epoch 1 is recorded; with sharded
    weights rank 0 does not stop alone (the others are in the same eval and checkpoint) but broadcasts
    it where all ranks are. full-file: every rank finds the stop file while sampling epoch 2; no rank
    cuts a sharded forward short, they agree after sampling. Either way both ranks end cancelled at
    epoch 1 and gather its checkpoint, which equals the single process's epoch 1."""
    _, root = runs
    assert sorted(os.listdir(root / name / "rank0")) == ["ckpt_000001.json", "ckpt_000001.pt"]
    assert not os.path.exists(root / name / "rank1")
    _assert_same(checkpoint_path(str(root / name / "rank0"), 1), checkpoint_path(str(root / "single-full"), 1))


def test_policies_bf16_compute_fp32_reduce_and_offload_on_gpus_only():
    """The FSDP2 policies the run's settings give (applied on a GPU only: not run here)."""
    from grpo_guard.training.sharding import fsdp_policies

    gpu = fsdp_policies("bf16", True, "cuda")
    assert (gpu["mp_policy"].param_dtype, gpu["mp_policy"].reduce_dtype) == (torch.bfloat16, torch.float32)
    assert type(gpu["offload_policy"]).__name__ == "CPUOffloadPolicy"
    cpu = fsdp_policies("no", True, "cpu")
    assert cpu["mp_policy"].param_dtype is None and type(cpu["offload_policy"]).__name__ == "OffloadPolicy"


def test_fsdp_needs_an_even_split_of_groups():
    with pytest.raises(ValueError, match="multiple of num_nodes × num_gpus"):
        RunConfig.from_dict({**BASE, "num_gpus": 2, "parallelism": "fsdp", "prompts_per_epoch": 3})

"""The trainer in a real 2-process gloo group on CPU (``num_gpus: 2``), on the toy backbone.

Tiny settings (groups of 2, 3 denoising steps, 1-2 epochs, one eval image): the ranks split the
prompt groups, gather rewards before the advantages, average gradients, and only rank 0 records.
Each spawned run costs a few seconds (mostly imports and loading the toy model twice)."""

from __future__ import annotations

import datetime
import os
import tempfile

import numpy as np
import pytest
import torch

from grpo_guard.config import RunConfig
from grpo_guard.training.recording import MemoryControl, MemoryRecorder
from tests.grpo_guard.controls import InterruptIn, StopAfter, StopFileAt

BASE = dict(backbone="toy", group_size=2, num_steps=3, eval_num_steps=2, lora_rank=4, sample_batch_size=2,
            eval_prompts=["a red circle on a blue background"], eval_seeds=[0], eval_every=1, seed=3,
            learning_rate=1e-3)


def _run(cfg: RunConfig, ckpt_dir: str, control=None, resume_from=None):
    """Train ``cfg`` in this process, recording every (rewards, group ids) -> advantages call."""
    import grpo_guard.training.trainer as trainer

    calls = []
    original = trainer.group_advantages

    def spy(rewards, group_ids, **kw):
        out = original(rewards, group_ids, **kw)
        calls.append((rewards.clone(), group_ids.clone(), out.clone()))
        return out

    trainer.group_advantages = spy
    try:
        rec = MemoryRecorder(ckpt_dir)
        if getattr(control, "recorder", False) is None:  # InterruptIn(after_record=True) watches it
            control.recorder = rec
        res = trainer.train(cfg, rec, control or MemoryControl(), resume_from=resume_from)
    finally:
        trainer.group_advantages = original
    return res, rec, calls


def _rank(rank: int, world: int, init_file: str, out_dir: str, cfg_json: str, stop_after: int | None,
          resume: bool, interrupt: tuple[int, str] | None = None) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    # A rank left waiting in a collective fails the test in minutes, not gloo's default half hour.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=180))
    try:
        cfg = RunConfig.from_dict(__import__("json").loads(cfg_json))
        ckpt_dir = os.path.join(out_dir, f"ckpt{rank}")
        control = StopAfter(stop_after) if stop_after is not None else None
        if interrupt is not None and interrupt[1] == "after_record" and rank == 0:  # rank 0's control alone
            control = InterruptIn(interrupt[0], after_record=True)
        elif interrupt is not None:  # "sampling": rank 0 finds the stop file; rank 1 (as on another node) never
            control = StopFileAt(os.path.join(out_dir, "stop" if rank == 0 else "elsewhere"),
                                 interrupt[0] if rank == 0 else None)
        res, rec, calls = _run(cfg, ckpt_dir, control)
        out = {"status": res.status, "step": res.step, "last": res.last_checkpoint, "calls": calls,
               "scalars": dict(rec.scalars), "samples": len(rec.samples), "checkpoints": dict(rec.checkpoints),
               "ckpt_files": sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else [],
               "weights": _trained_weights(), "checks": getattr(control, "checks", None)}
        if resume:
            path = [None]
            if rank == 0:
                path[0] = res.last_checkpoint
            dist.broadcast_object_list(path, src=0)  # every rank resumes the same checkpoint
            res2, rec2, calls2 = _run(cfg.with_overrides({"epochs": cfg.epochs}), ckpt_dir, resume_from=path[0])
            out.update({"resumed": (res2.status, res2.step), "resumed_calls": calls2,
                        "resumed_weights": _trained_weights(), "resumed_scalars": dict(rec2.scalars)})
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


_LAST: dict[str, object] = {}


def _trained_weights() -> list[torch.Tensor]:
    """The live trainable weights of the backbone the last train() call built (captured by the
    patched add_lora below)."""
    bb = _LAST.get("backbone")
    return [p.detach().clone() for p in bb.trainable_parameters()] if bb is not None else []


def _install_capture() -> None:
    from grpo_guard.models.sd3 import SD3Backbone

    if getattr(SD3Backbone.add_lora, "_captures", False):
        return
    original = SD3Backbone.add_lora

    def add_lora(self, *a, **kw):
        _LAST["backbone"] = self
        return original(self, *a, **kw)

    add_lora._captures = True
    SD3Backbone.add_lora = add_lora


def _spawn(cfg: RunConfig, *, stop_after: int | None = None, resume: bool = False,
           interrupt: tuple[int, str] | None = None) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_rank_entry, args=(2, os.path.join(d, "init"), d, cfg.to_json(), stop_after, resume, interrupt),
                 nprocs=2, join=True)
        return [torch.load(os.path.join(d, f"rank{r}.pt"), weights_only=False) for r in range(2)]


def _rank_entry(rank, *args):
    _install_capture()
    _rank(rank, *args)


def test_two_ranks_match_one_process_and_only_rank_0_records(tmp_path):
    """Even split (2 groups of 2, one micro-batch of the whole batch per step): epoch 1's gathered
    rewards and advantages are exactly the single process's, every rank holds the same weights
    after each epoch, the 2-rank weights match the single process's (the averaged gradient is the
    full-batch mean), and rank 1 wrote nothing."""
    torch.set_num_threads(1)
    _install_capture()
    cfg = RunConfig.from_dict({**BASE, "prompts_per_epoch": 2, "train_batch_size": 4, "epochs": 2})
    single, rec, calls = _run(cfg, str(tmp_path / "single"))
    single_w = _trained_weights()
    r0, r1 = _spawn(cfg.with_overrides({"num_gpus": 2}))

    assert r0["status"] == r1["status"] == "succeeded" and r0["step"] == r1["step"] == 2
    # Gathered rewards, group ids and advantages: identical on both ranks, every epoch ...
    assert len(r0["calls"]) == len(r1["calls"]) == 2
    for (ra, ia, aa), (rb, ib, ab) in zip(r0["calls"], r1["calls"], strict=True):
        assert torch.equal(ra, rb) and torch.equal(ia, ib) and torch.equal(aa, ab)
    # ... and in epoch 1 (same weights) exactly what one process computes over the same groups.
    r_single, ids_single, adv_single = calls[0]
    assert torch.equal(r0["calls"][0][0], r_single) and torch.equal(r0["calls"][0][1], ids_single)
    assert torch.equal(r0["calls"][0][2], adv_single)
    # Identical weights across ranks; close to the single process (same mean gradient, other sums).
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"], strict=True))
    # (AdamW turns float-summation-order noise in near-zero gradients into small step differences.)
    moved = max(float((a - b).abs().max()) for a, b in zip(single_w, _initial_lora(cfg), strict=True))
    apart = max(float((a - b).abs().max()) for a, b in zip(r0["weights"], single_w, strict=True))
    assert moved > 1e-4 and apart < 0.02 * moved, (apart, moved)
    # Only rank 0 recorded: scalars, eval samples, checkpoints.
    assert r0["scalars"] and r0["samples"] == 3 and sorted(r0["checkpoints"]) == [2]
    assert r1["scalars"] == {} and r1["samples"] == 0 and r1["checkpoints"] == {} and r1["ckpt_files"] == []
    assert {k for k in r0["scalars"]} == {k for k in rec.scalars}
    for key in ("reward/total/mean", "grad_norm", "adv_abs_mean"):
        assert r0["scalars"][(1, key)] == pytest.approx(rec.scalars[(1, key)], rel=1e-5), key


def _initial_lora(cfg: RunConfig) -> list[torch.Tensor]:
    from grpo_guard.models import build_backbone

    bb = build_backbone(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        bb.add_lora(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return [p.detach().clone() for p in bb.trainable_parameters()]


def test_uneven_ranks_stop_together_and_resume_from_the_same_checkpoint():
    """3 groups over 2 ranks (4 and 2 samples, micro-batches of 1: rank 1 pads with empty ones):
    rank 0's stop request after epoch 1 ends both ranks, rank 0 alone checkpoints, both resume
    from that checkpoint and finish with identical weights."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({**BASE, "prompts_per_epoch": 3, "train_batch_size": 1, "epochs": 2,
                               "num_gpus": 2, "gradient_accumulation_steps": 2})
    r0, r1 = _spawn(cfg, stop_after=1, resume=True)
    assert (r0["status"], r0["step"]) == (r1["status"], r1["step"]) == ("cancelled", 1)
    assert r0["ckpt_files"] == ["ckpt_000001.json", "ckpt_000001.pt"] and r1["ckpt_files"] == []
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"], strict=True))
    assert r0["resumed"] == r1["resumed"] == ("succeeded", 2)
    assert all(torch.equal(a, b) for a, b in zip(r0["resumed_weights"], r1["resumed_weights"], strict=True))
    assert len(r0["resumed_calls"]) == 1 and torch.equal(r0["resumed_calls"][0][2], r1["resumed_calls"][0][2])
    assert r0["resumed_calls"][0][0].shape == (6,)
    assert r1["resumed_scalars"] == {}
    assert np.isfinite(r0["resumed_scalars"][(2, "grad_norm")])


@pytest.mark.parametrize(("where", "cut"), [("after_record", 2), ("sampling", 1)])
def test_a_shutdown_stops_both_ranks_at_one_checkpoint_and_both_resume_from_it(where, cut):
    """after_record: a worker's shutdown reaches rank 0's control only, after epoch 2 is recorded,
    where rank 0 runs alone (rank 1 already waits in epoch 3's stop poll): rank 0 checkpoints
    epoch 2 and answers that poll. sampling: rank 0 finds the stop file while sampling epoch 2 and
    cuts it short; rank 1, which cannot see it (another node), samples on, and after sampling the
    ranks agree to stop: no rank computes epoch 2's advantages. Either way both ranks end
    ``cancelled`` at one epoch (none left waiting in a collective) and both resume from rank 0's
    checkpoint to the end with identical weights, an owed eval first. (Before the update and
    between its micro-batches, the worker's real 2-rank test in tests/worker/test_multi_gpu.py.)"""
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({**BASE, "prompts_per_epoch": 3, "train_batch_size": 1, "epochs": 3,
                               "num_gpus": 2, "eval_every": 2})
    r0, r1 = _spawn(cfg, resume=True, interrupt=(2, where))
    assert (r0["status"], r0["step"]) == (r1["status"], r1["step"]) == ("cancelled", cut)
    assert r0["ckpt_files"] == [f"ckpt_{cut:06d}.json", f"ckpt_{cut:06d}.pt"] and r1["ckpt_files"] == []
    assert max(step for step, _ in r0["scalars"]) == cut and (2, "eval/proxy") not in r0["scalars"]
    assert len(r0["calls"]) == len(r1["calls"]) == (2 if where == "after_record" else 1)  # epochs with advantages
    if where == "sampling":  # rank 1 asked between its denoising steps, not only where the ranks agree
        assert r1["checks"] > 2, r1["checks"]
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"], r1["weights"], strict=True))
    assert r0["resumed"] == r1["resumed"] == ("succeeded", 3)
    assert all(torch.equal(a, b) for a, b in zip(r0["resumed_weights"], r1["resumed_weights"], strict=True))
    assert sorted({step for step, key in r0["resumed_scalars"] if key == "grad_norm"}) == list(range(cut + 1, 4))
    assert sorted({step for step, key in r0["resumed_scalars"] if key == "eval/proxy"}) == [2, 3]

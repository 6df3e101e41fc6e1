"""Two "nodes" on 127.0.0.1: ``grpo-guard train --nnodes 2 --node-rank R --master 127.0.0.1:P``
started twice (one process per node, CPU/gloo), through accelerate's own multi-node launch, on
the toy backbone; the trained weights equal a single-process run of the same config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.training.checkpoint import load_checkpoint
from grpo_guard.training.distributed import free_port
from grpo_guard.training.recording import read_jsonl

# As tests/grpo_guard/test_distributed_train.py: 2 groups of 2 (one per node), one micro-batch of
# the whole batch per step, so the averaged gradient is the full-batch mean. adam_eps 0.1 keeps
# AdamW's step linear in the gradient: with the default 1e-8, m/sqrt(v) turns the rounding of a
# near-zero gradient element (the two nodes sum in another order than one process) into a whole
# ±lr step (measured: 6.6e-6 apart on LoRA weights of size 2e-3), which would test Adam's sign,
# not the launch. With 0.1 the runs differ by < 4e-6 of each weight tensor's size.
CFG = dict(backbone="toy", group_size=2, num_steps=3, eval_num_steps=2, lora_rank=4, sample_batch_size=2,
           eval_prompts=["a red circle on a blue background"], eval_seeds=[0], eval_every=10, seed=3,
           learning_rate=1e-3, adam_eps=0.1, prompts_per_epoch=2, train_batch_size=4, epochs=2)


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GG_DIST_TIMEOUT_SECONDS": "120"}
    for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_NNODES", "SLURM_NODEID", "WORLD_SIZE", "RANK"):
        env.pop(key, None)
    return env


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    rows = read_jsonl(str(run_dir / "checkpoints.jsonl"))
    return load_checkpoint(rows[-1]["path"]).trainable


@pytest.mark.slow
def test_two_nodes_on_localhost_train_as_one_process(tmp_path):
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG))
    train = [sys.executable, "-m", "grpo_guard.cli", "train", str(cfg_path)]
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(train + ["--nnodes", "2", "--node-rank", str(r), "--master", master,
                                       "--out", str(tmp_path / f"node{r}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for r in (0, 1)]
    try:  # the single-process run meanwhile, in this process
        single = CliRunner().invoke(main, ["train", str(cfg_path), "--out", str(tmp_path / "single")],
                                    catch_exceptions=False)
        outs = [p.communicate(timeout=300) for p in nodes]
    finally:
        for p in nodes:  # a failed test leaves no launcher behind (its ranks then fail on the lost peer)
            if p.poll() is None:
                p.kill()
    assert single.exit_code == 0, single.output[-3000:]
    for p, (_, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "--num_machines 2" in outs[0][1] and "on node 1 of 2" in outs[1][1]
    assert "succeeded after 2 epochs" in outs[0][0]

    # Node 0 holds rank 0 and alone writes the run directory; node 1 wrote nothing.
    assert not (tmp_path / "node1").exists()
    run = tmp_path / "node0"
    assert yaml.safe_load((run / "config.yaml").read_text())["num_nodes"] == 2
    assert [r["step"] for r in read_jsonl(str(run / "scalars.jsonl"), dedupe=False) if "grad_norm" in r] == [1, 2]

    two, one = _final_weights(run), _final_weights(tmp_path / "single")
    assert two.keys() == one.keys() and two
    lora_b = [w for name, w in one.items() if "lora_B" in name]
    # B starts at 0, so these LoRAs trained (the last block's context output feeds nothing: its B stays 0)
    moved = [float(w.abs().max()) for w in lora_b]
    assert max(moved) > 1e-4 and sum(m == 0 for m in moved) <= 1
    for name, w in one.items():
        # rtol 1e-5 of each element, and of the tensor's size for elements near 0
        torch.testing.assert_close(two[name], w, rtol=1e-5, atol=1e-5 * float(w.abs().max()), msg=name)

"""One end to end run of the real trainer (``grpo_guard.training.trainer.train``, no GG_TRAINER double)
through ``grpo-guard submit --wait`` and a real worker process: SQLite, embedded broker.

It uses the shipped toy base model when the package has it, else a tiny random SD3 pipeline
built in code with model-free rewards (so the test never needs downloaded weights). Tiny
settings: 2 epochs of 2 prompts x 2 samples, 4 denoising steps, an eval (1 seed) every epoch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from grpo_guard.store import queries
from tests.storehelpers import backend_env
from tests.worker.procs import REPO, workers, world_env

pytestmark = [pytest.mark.slow]


def _toy_base_is_shipped() -> bool:
    try:
        from grpo_guard.models.sd3 import check_pipeline_dir
        from grpo_guard.toyworld import BASE_MODEL_DIR

        check_pipeline_dir(BASE_MODEL_DIR, what="shipped toy base model")
        return True
    except Exception:
        return False


def _config(tmp: str) -> str:
    lines = ["epochs: 2", "group_size: 2", "prompts_per_epoch: 2", "num_steps: 4", "eval_every: 1",
             "eval_num_steps: 4", "eval_seeds: [0]", "checkpoint_every: 1", "lora_rank: 4", "lora_alpha: 8",
             "train_batch_size: 4",
             "eval_prompts: ['a red circle on a blue background', 'a green square on a white background']"]
    if _toy_base_is_shipped():
        lines.append("backbone: toy")
    else:
        from grpo_guard.models.testing import tiny_sd3_pipeline_dir

        model = tiny_sd3_pipeline_dir(tmp)
        lines += ["backbone: sd3", f"model: {model}", "resolution: 32",
                  "prompts: ['a red circle on a blue background', 'a green square on a white background']",
                  "rewards: {jpeg_compressibility: 1.0}", "gold: [jpeg_incompressibility]"]
    path = os.path.join(tmp, "tiny.yaml")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_the_real_trainer_runs_end_to_end_through_a_worker(tmp_path, monkeypatch):
    with backend_env("sqlite", tmp_path) as url:
        # one intra-op thread: on a shared 2-core machine spin-waiting threads cost far more than they give
        env = world_env(url, str(tmp_path), "embedded", GG_TRAINER="", OMP_NUM_THREADS="1")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        cfg = _config(str(tmp_path))
        with workers(env, ["real"], str(tmp_path)) as ws:
            r = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "submit", cfg, "--wait", "--timeout", "400"],
                               capture_output=True, text=True, cwd=REPO, env={**os.environ}, timeout=450)
            assert r.returncode == 0, r.stdout + r.stderr + ws[0].log()[-4000:]
        rid = int(r.stdout.strip())
        row = queries.get_run(rid)
        assert row.status == "succeeded" and row.step == 2 and row.last_proxy is not None
        steps, values = queries.metric_series(rid, ["eval/proxy"])["eval/proxy"]
        assert steps == [0, 1, 2], "an eval at the base model and after each epoch"
        loss_steps = queries.metric_series(rid, ["reward/total/mean"])["reward/total/mean"][0]
        assert loss_steps == [1, 2]
        stat_steps, js, matrix = queries.step_stats_matrix(rid, "sigma")
        assert stat_steps == [1, 2] and js and all(v is not None for r_ in matrix for v in r_)
        samples = queries.samples_for(rid, step=2)
        assert len(samples) == 2 and all(os.path.getsize(queries.artifact_path(s.image_location)) > 0 for s in samples)
        ck = queries.checkpoints(rid)
        assert ck and ck[-1].step == 2 and os.path.exists(queries.artifact_path(ck[-1].location))

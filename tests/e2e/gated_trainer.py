"""A trainer double for the browser tests of the Run page's figures: it keeps the trainer's
contract (tests/worker/fake_trainer.py) but writes the full set of rows a real toy run writes
(tests/app/synthetic.py: every scalar, every per-denoising-step statistic, eval scalars and
images), and it *pauses* after step ``GG_E2E_PAUSE_AT`` until the file ``GG_E2E_GATE`` exists.

A paused run is "a live run mid-way" that holds still: status running, some steps stored, no
new rows, so a test can wait for the page to show exactly what the store holds and compare.
Selected with ``GG_TRAINER=tests.e2e.gated_trainer:train``; step = epoch, steps 0..epochs-1.
"""

from __future__ import annotations

import os
import time

import numpy as np

from grpo_guard.training.recording import Sample
from tests.app import synthetic
from tests.worker.fake_trainer import TrainResult


def _gate_closed(pause_at: int, step: int) -> bool:
    gate = os.environ.get("GG_E2E_GATE", "")
    return step == pause_at and bool(gate) and not os.path.exists(gate)


def train(config, recorder, control, *, resume_from: str | None = None, device: str | None = None) -> TrainResult:
    n = int(config.epochs)
    pause_at = int(os.environ.get("GG_E2E_PAUSE_AT", "-1"))
    delay = float(os.environ.get("GG_FAKE_STEP_SECONDS", "0.2"))
    rng = np.random.default_rng(int(config.seed))
    algo = str(config.algorithm)
    for step in range(n):
        if control.stop_requested():
            recorder.flush()
            return TrainResult("cancelled", max(0, step - 1), None)
        time.sleep(delay)
        recorder.log_scalars(step, synthetic.scalars(algo, step, n, rng, float(config.learning_rate)))
        recorder.log_step_stats(synthetic.step_stats(algo, step, n, rng))
        if step % int(config.eval_every) == 0 or step == n - 1:
            proxy, gold = synthetic.curves(algo, step, n)
            recorder.log_scalars(step, {"eval/proxy": proxy, "eval/gold": gold})
            for p in config.eval_prompts:
                for sd in config.eval_seeds:
                    recorder.log_sample(Sample(step=step, prompt=p, seed=sd, image=synthetic.image(p, sd, 0.0),
                                               scores={"toy_fg_share": proxy}, proxy=proxy, gold=gold))
        recorder.set_progress(step + 1, n)
        recorder.flush()
        while _gate_closed(pause_at, step) and not control.stop_requested():
            time.sleep(0.2)
    recorder.flush()
    return TrainResult("succeeded", n - 1, None)

"""An in-memory stand-in for ``grpo_guard.training.trainer.train`` that keeps its contract and costs
milliseconds: step = epoch, an eval at step 0 and every ``eval_every`` epochs, a checkpoint every
``checkpoint_every`` epochs and at the end, control polled once per epoch (stop -> checkpoint
and ``cancelled``), resume from a checkpoint with ``recorder.prune_after`` first.

Every logged value is a pure function of (step, j), so a resumed run must log exactly what an
uninterrupted one would. Knobs (environment, read per call):
  GG_FAKE_STEP_SECONDS  sleep per epoch (default 0.05)
  GG_FAKE_FAIL_AT       raise at this epoch (default: never)
A config with ``seed: 13`` fails at epoch 2 (lets a test make one run fail through its config).
Selected in worker subprocesses with ``GG_TRAINER=tests.worker.fake_trainer:train``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from grpo_guard.training.recording import Sample, StepStat

FAILING_SEED = 13
PROMPTS = ("a red circle on a blue background", "a green square on a white background")
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS"
       b"\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00"
       b"\x00IEND\xaeB`\x82")


@dataclass
class TrainResult:
    status: str
    step: int
    last_checkpoint: str | None


def loss_at(step: int) -> float:
    return 1.0 / (1 + step)


def grad_norm_at(step: int, j: int) -> float:
    return (j + 1) * (1 + 0.01 * step)


def _eval(recorder, config, step: int) -> None:
    for prompt in PROMPTS:
        for seed in config.eval_seeds:
            recorder.log_sample(Sample(step=step, prompt=prompt, seed=seed, image=PNG,
                                       scores={"toy_fg_share": 0.5 + 0.01 * step},
                                       proxy=0.5 + 0.01 * step, gold=0.8 - 0.001 * step))
    recorder.log_scalars(step, {"eval/proxy": 0.5 + 0.01 * step, "eval/gold": 0.8 - 0.001 * step})


def train(config, recorder, control, *, resume_from: str | None = None, device: str | None = None) -> TrainResult:
    delay = float(os.environ.get("GG_FAKE_STEP_SECONDS", "0.05"))
    fail_at = 2 if config.seed == FAILING_SEED else int(os.environ.get("GG_FAKE_FAIL_AT", "-1"))
    T, E = config.num_steps, config.epochs
    start, last = 0, resume_from
    recorder.log_line(f"fake trainer started (pid {os.getpid()}, resume_from={resume_from})")
    if resume_from:
        with open(resume_from) as fh:
            start = json.load(fh)["step"]
        recorder.prune_after(start)
    else:
        _eval(recorder, config, 0)

    def save(step: int) -> str:
        path = os.path.join(recorder.checkpoint_dir(), f"ckpt_{step:06d}.json")
        with open(path, "w") as fh:
            json.dump({"step": step}, fh)
        recorder.log_checkpoint(step, path, {"step": step})
        return path

    for epoch in range(start + 1, E + 1):
        if control.stop_requested():
            last = save(epoch - 1)
            recorder.flush()
            return TrainResult("cancelled", epoch - 1, last)
        time.sleep(delay)
        if epoch == fail_at:
            raise RuntimeError(f"injected failure at epoch {epoch}")
        recorder.log_step_stats([StepStat(epoch, j, 1 - j / T, 1 / T, {"grad_norm_v": grad_norm_at(epoch, j),
                                                                        "clip_high": 0.1, "custom_stat": j * 0.5})
                                 for j in range(T)])
        recorder.log_scalars(epoch, {"loss": loss_at(epoch), "reward/total/mean": 0.01 * epoch})
        recorder.set_progress(epoch, E)
        recorder.flush()
        sample_now, save_now = control.take_sample_now(), control.take_save_now()
        if epoch % config.eval_every == 0 or epoch == E or sample_now:
            _eval(recorder, config, epoch)
        if epoch % config.checkpoint_every == 0 or epoch == E or save_now:
            last = save(epoch)
    recorder.flush()
    return TrainResult("succeeded", E, last)

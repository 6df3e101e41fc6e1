"""One rank of a multi-GPU run started by a worker: ``python -m worker.ranks RUN_ID --lease L
--attempt A --result FILE [--resume CKPT]``, under ``accelerate launch`` (``worker.tasks``
builds the command with ``grpo_guard.training.distributed.launch_module_command``).

Every rank reads the run's stored config and resumes from the same checkpoint; rank 0 records to
the store with the worker's lease (so a sweep that takes the run away fences it as usual) and
reads the run's control flags, which the trainer broadcasts; the other ranks record nothing. Each
rank writes ``FILE.<rank>`` (JSON: status, and error + traceback on failure), from which the
worker process that waits on the launcher ends the attempt.

Shutdown: the worker, told to shut down, creates ``FILE.stop`` (:func:`stop_file`) rather than
signalling the group (``accelerate launch`` would end the ranks on a signal). Every rank's control
reports it as ``interrupted()`` (a file check, no database read): each rank cuts its sampling
short and the ranks agree after it; elsewhere the trainer broadcasts rank 0's answer at the next
point where the whole group can stop. Rank 0 checkpoints, every rank exits 0, and rank 0's result
says ``"interrupted": true`` so the worker ends the attempt ``interrupted``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import traceback
from typing import Any


def _write(path: str, rank: int, payload: dict[str, Any]) -> None:
    tmp = f"{path}.{rank}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
    os.replace(tmp, f"{path}.{rank}")


def stop_file(result_path: str) -> str:
    """The file whose existence asks the ranks of the launch writing ``result_path`` to stop."""
    return f"{result_path}.stop"


class RankControl:
    """A rank's control: ``inner`` (rank 0: the run's ``StoreControl``) plus ``interrupted()``,
    true once the worker created the stop file. ``user_stop``: the user asked for the stop too."""

    def __init__(self, inner: Any, stop_path: str) -> None:
        self.inner, self.stop_path = inner, stop_path
        self.user_stop = self._seen = False

    def interrupted(self) -> bool:
        self._seen = self._seen or os.path.exists(self.stop_path)
        return self._seen

    def stop_requested(self) -> bool:
        self.user_stop = self.inner.stop_requested()
        return self.user_stop or self.interrupted()

    def take_sample_now(self) -> bool:
        return self.inner.take_sample_now()

    def take_save_now(self) -> bool:
        return self.inner.take_save_now()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.ranks")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--lease", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)

    from grpo_guard.store.lifecycle import LeaseLostError
    from grpo_guard.store.recorder import StoreControl, StoreRecorder
    from grpo_guard.training.distributed import init_from_env, shutdown
    from grpo_guard.training.recording import NullControl, NullRecorder
    from worker.attempt import describe, env_float, load_config
    from worker.tasks import resolve_train_fn

    rank, _world = init_from_env()
    recorder: Any
    if rank == 0:
        recorder = StoreRecorder(args.run_id, lease=args.lease, attempt=args.attempt,
                                 flush_interval=env_float("GG_FLUSH_SECONDS", 0.5),
                                 heartbeat_interval=env_float("GG_HEARTBEAT_SECONDS", 5.0))
        control = RankControl(StoreControl(args.run_id, lease=args.lease), stop_file(args.result))
    else:  # it reads the stop file too, to cut its own sampling short (the ranks then agree)
        recorder, control = NullRecorder(), RankControl(NullControl(), stop_file(args.result))
    try:
        config = load_config(args.run_id)
        result = resolve_train_fn()(config, recorder, control, resume_from=args.resume)
        if rank == 0:
            recorder.close()
        status = getattr(result, "status", None)
        shut_down = status == "cancelled" and rank == 0 and control.interrupted() and not control.user_stop
        _write(args.result, rank, {"status": status, "step": getattr(result, "step", None),
                                   "interrupted": shut_down})
        shutdown()
        return 0
    except LeaseLostError as e:
        # Non-zero on purpose, here and below: the launcher then ends the other ranks, which
        # would otherwise wait for this one in their next collective.
        _write(args.result, rank, {"status": "lease-lost", "error": str(e)})
        return 1
    except Exception as e:
        _write(args.result, rank, {"status": "failed", "error": describe(e), "traceback": traceback.format_exc()})
        if rank == 0:
            with contextlib.suppress(Exception):  # the store may be what failed; the worker records the end
                recorder.close()
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""A reward server that breaks mid-run, through the real worker path: the run fails with one
sentence naming the server and the reason, no reward of the broken epoch is stored (never a 0),
and resuming once the server is back continues from the last checkpoint."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from grpo_guard.config import RunConfig
from grpo_guard.rewards import build_reward, load_extras
from grpo_guard.rewards.server import make_server
from grpo_guard.store import queries
from tests.hardening.test_faults import TINY, real_trainer  # noqa: F401  (the fixture)


class BreaksAfter:
    """toy_fg_share that raises (the server answers 500) from request ``n + 1`` until ``healed``."""

    def __init__(self, n: int):
        self.inner, self.n, self.calls, self.healed = build_reward("toy_fg_share"), n, 0, False

    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.calls > self.n and not self.healed:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner(images, prompts)


def _last(run_id: int, key: str) -> float:
    return queries.metric_series(run_id, [key])[key][1][-1]


@pytest.mark.slow
def test_a_reward_server_that_breaks_fails_the_run_loudly_and_it_resumes(real_trainer, monkeypatch):  # noqa: F811
    from app.pages.run_detail import reward_server_rows  # the Status tab's rows

    reward = BreaksAfter(3)  # eval 0, epoch 1, eval 1 are scored; epoch 2's request fails
    server = make_server("toy_fg_share", "127.0.0.1", 0, reward=reward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GG_REWARD_SERVERS", json.dumps({"servers": {"toy_remote": {
        "url": server.url, "reward": "toy_fg_share", "retries": 1, "backoff": 0.01}}}))
    load_extras(reload=True)
    try:
        rid = queries.create_run(RunConfig.from_dict({**TINY, "epochs": 2, "rewards": {"toy_remote": 1.0},
                                                      "gold": ["toy_alignment"]}))
        assert real_trainer(rid) == "failed"
        row = queries.get_run(rid)
        assert row.error.startswith(f"RewardServerError: reward server 'toy_remote' ({server.url}) failed 2 time(s), "
                                    "last: HTTP 500 (RuntimeError: CUDA error"), row.error
        steps, values = queries.metric_series(rid, ["reward/toy_remote/mean"])["reward/toy_remote/mean"]
        assert steps == [1] and all(math.isfinite(v) for v in values), "epoch 2 must store no reward at all"
        assert [c.step for c in queries.checkpoints(rid)] == [1]
        fails = queries.metric_series(rid, ["reward/toy_remote/failures"])["reward/toy_remote/failures"]
        assert fails == ([0, 1, 2], [0.0, 0.0, 2.0]), "the attempts that failed the run are counted at its epoch"
        keys = ["reward/toy_remote/failures", "reward/toy_remote/latency"]
        assert reward_server_rows(queries.metric_series(rid, keys)) == [
            ("reward server toy_remote", f"last latency {_last(rid, keys[1]):.3f} s, 2 failed attempt(s) in all")]

        reward.healed = True  # the operator fixes the server; the run resumes from epoch 1's checkpoint
        queries.resume_run(rid)
        assert real_trainer(rid) == "succeeded"
        steps, _ = queries.metric_series(rid, ["reward/toy_remote/mean"])["reward/toy_remote/mean"]
        assert steps == [1, 2]
        fails = queries.metric_series(rid, ["reward/toy_remote/failures"])["reward/toy_remote/failures"]
        assert fails == ([0, 1, 2], [0.0, 0.0, 0.0]), "resuming re-runs epoch 2, whose attempts all succeeded"
    finally:
        server.shutdown()
        server.server_close()
        monkeypatch.delenv("GG_REWARD_SERVERS")
        load_extras(reload=True)

"""Reward servers: the reference server and the client. A failure is never a score: timeouts,
5xx, garbage, wrong lengths and NaN are retried, then fail loudly naming the server; the run stays
resumable from its last checkpoint."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from grpo_guard.rewards import REGISTRY, build_reward, load_extras
from grpo_guard.rewards.protocol import (
    PROTOCOL,
    ProtocolError,
    parse_answer,
    parse_request,
    score_answer,
    score_request,
)
from grpo_guard.rewards.remote import RemoteReward, RewardServerError
from grpo_guard.rewards.server import check_bind, make_server
from grpo_guard.rewards.servers import ServerSpec, parse_entry
from tests.grpo_guard.rewards.toyrun import toy_config, toy_run

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


def _images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def toy_server():
    """The reference server on 127.0.0.1 (a free port) serving toy_fg_share."""
    server = make_server("toy_fg_share", "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def _declare(monkeypatch, **servers) -> None:
    monkeypatch.setenv("GG_REWARD_SERVERS", json.dumps({"servers": servers}))
    load_extras(reload=True)


@pytest.fixture
def declared(monkeypatch):
    yield lambda **servers: _declare(monkeypatch, **servers)
    monkeypatch.delenv("GG_REWARD_SERVERS", raising=False)
    load_extras(reload=True)


def test_the_protocol_round_trips_pixels_prompts_and_metadata():
    from grpo_guard.prompts.prompt import Prompt

    imgs = _images()
    prompts = [Prompt("two cats", {"tag": "counting", "include": [{"class": "cat", "count": 2}]}), *PROMPTS, "x"]
    name, got, back = parse_request(score_request("geneval", imgs, prompts))
    assert name == "geneval" and np.array_equal(got, imgs), "PNG must be lossless: the server scores the exact pixels"
    assert back == prompts and back[0].meta["tag"] == "counting" and back[1].meta == {}


@pytest.mark.parametrize("body, why", [
    (b"<html>502 Bad Gateway</html>", "not JSON"),
    (json.dumps({"protocol": PROTOCOL, "scores": [1.0]}).encode(), "1 scores for 2 images"),
    (b'{"protocol": "grpo-guard-reward/1", "scores": [1.0, NaN]}', "NaN"),
    (json.dumps({"protocol": PROTOCOL, "scores": [1.0, None]}).encode(), "score 1"),
    (json.dumps({"protocol": PROTOCOL, "scores": [1.0, True]}).encode(), "score 1"),
    (json.dumps({"protocol": "other/2", "scores": [1.0, 2.0]}).encode(), "protocol"),
])
def test_an_answer_that_breaks_the_protocol_is_refused(body, why):
    with pytest.raises(ProtocolError, match=why):
        parse_answer(body, 2)


def test_a_public_bind_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(ValueError, match="without a token"):
        check_bind("0.0.0.0", None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "localhost.localdomain", "ip6-localhost", "0.0.0.0", "::", "10.0.0.7",
                                  "gpu-box", ""])
def test_the_bind_rules_are_serves(host):
    """`grpo-guard reward-server` refuses exactly the hosts `grpo-guard serve` refuses without credentials."""
    from app.main import AuthConfigError
    from app.main import check_bind as serve_check_bind

    try:
        serve_check_bind(host, [])
        serve_ok = True
    except AuthConfigError:
        serve_ok = False
    try:
        check_bind(host, None)
        ours_ok = True
    except ValueError:
        ours_ok = False
    assert ours_ok == serve_ok, host


def test_a_declared_server_is_a_name_and_a_config_never_names_a_url(declared, toy_server):
    from grpo_guard.config import RunConfig

    declared(toy_remote={"url": toy_server.url, "reward": "toy_fg_share", "kind": "proxy", "backbones": ["toy"]},
             bad={"url": "file:///etc/passwd"})
    spec = REGISTRY["toy_remote"]
    assert spec.source == f"server {toy_server.url}" and spec.kind == "proxy" and "bad" not in REGISTRY
    assert RunConfig.from_dict({"rewards": {"toy_remote": 1.0}}).submit_errors() == []
    with pytest.raises(ValueError, match="never by import path"):
        RunConfig.from_dict({"rewards": {toy_server.url: 1.0}})
    with pytest.raises(ValueError, match="url must be"):
        parse_entry("x", {"url": "http://user:pw@host/"})


def test_remote_scores_equal_in_process_scores(toy_server):
    remote = RemoteReward("r", ServerSpec("r", toy_server.url, "toy_fg_share", batch_size=3))
    imgs = _images(7)
    prompts = [PROMPTS[i % 2] for i in range(7)]
    assert np.array_equal(remote(imgs, prompts), build_reward("toy_fg_share")(imgs, prompts))
    stats = remote.take_stats()
    assert stats["failures"] == 0 and stats["latency"] > 0 and remote.take_stats() == {"failures": 0.0}


def test_the_server_refuses_a_wrong_token_without_retrying(monkeypatch):
    server = make_server("toy_fg_share", "127.0.0.1", 0, token="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("GG_TEST_TOKEN", "wrong")
        remote = RemoteReward("r", ServerSpec("r", server.url, "toy_fg_share", token_env="GG_TEST_TOKEN", retries=5,
                                              backoff=5.0))
        t0 = time.monotonic()
        with pytest.raises(RewardServerError, match="refused the request: HTTP 401"):
            remote(_images(2), PROMPTS)
        assert time.monotonic() - t0 < 4.0, "a 401 cannot heal: it must not wait through the retries"
        monkeypatch.setenv("GG_TEST_TOKEN", "s3cret")
        assert remote(_images(2), PROMPTS).shape == (2,)
    finally:
        server.shutdown()
        server.server_close()


class _Faulty(BaseHTTPRequestHandler):
    """Answers with the fault named by the server's ``mode``; counts requests."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls += 1
        mode = self.server.mode
        if mode == "drop":  # the process died mid-request: the connection closes without an answer
            self.close_connection = True
            return
        if mode == "slow":
            time.sleep(1.0)
        body = {"slow": b'{"protocol": "grpo-guard-reward/1", "scores": [1.0, 1.0]}',
                "garbage": b"{not json", "nan": b'{"protocol": "grpo-guard-reward/1", "scores": [0.5, NaN]}',
                "short": b'{"protocol": "grpo-guard-reward/1", "scores": [0.5]}',
                "500": b'{"error": "CUDA out of memory"}'}[mode]
        self.send_response(500 if mode == "500" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("mode, reason", [("slow", "no answer within the 0.3 s timeout"), ("garbage", "the body is not JSON"),
                                          ("nan", "the JSON holds NaN"), ("short", "the answer has 1 scores for 2 images"),
                                          ("500", "HTTP 500 \\(CUDA out of memory\\)"),
                                          ("drop", "the connection failed \\(RemoteDisconnected")])
def test_a_faulty_server_is_retried_then_fails_loudly_never_a_score(mode, reason):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    server.daemon_threads, server.mode, server.calls = True, mode, 0
    server.handle_error = lambda *a: None  # the slow answer's client has gone: a broken pipe is expected
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        remote = RemoteReward("judge", ServerSpec("judge", url, "x", timeout=0.3, retries=2, backoff=0.01))
        with pytest.raises(RewardServerError, match=f"'judge' \\({url}\\) failed 3 time\\(s\\), last: {reason}"):
            remote(_images(2), PROMPTS)
        assert server.calls == 3, "two retries after the first failure"
        assert remote.take_stats() == {"failures": 3.0}
    finally:
        server.shutdown()
        server.server_close()


def test_a_nan_from_the_served_reward_is_a_500_then_a_loud_error_never_a_score():
    server = make_server("toy_fg_share", "127.0.0.1", 0, reward=lambda images, prompts: np.full(len(images), np.nan))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = RemoteReward("r", ServerSpec("r", server.url, "toy_fg_share", retries=1, backoff=0.01))
        with pytest.raises(RewardServerError, match=r"failed 2 time\(s\), last: HTTP 500 \(ValueError: the reward "
                                                    r"returned a non-finite score \(nan\) for image 0\)"):
            remote(_images(2), PROMPTS)
        assert remote.take_stats() == {"failures": 2.0}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_toy_run_with_a_reward_server_logs_what_in_process_scoring_logs(declared, toy_server, tmp_path):
    """The reference server serving toy rewards: the run's rewards equal the in-process ones exactly."""
    declared(toy_remote={"url": toy_server.url, "reward": "toy_fg_share", "kind": "proxy", "backbones": ["toy"]})
    _, local = toy_run(toy_config(rewards={"toy_fg_share": 1.0}), str(tmp_path / "a"))
    _, remote = toy_run(toy_config(rewards={"toy_remote": 1.0}), str(tmp_path / "b"))
    for key in ("reward/{}/mean", "reward/{}/std", "eval/{}"):
        assert local.scalars[(1, key.format("toy_fg_share"))] == remote.scalars[(1, key.format("toy_remote"))], key
    for key in ("reward/total/mean", "loss", "grad_norm", "eval/toy_alignment"):
        assert local.scalars[(1, key)] == remote.scalars[(1, key)], key
    assert remote.scalars[(1, "reward/toy_remote/failures")] == 0 and remote.scalars[(1, "reward/toy_remote/latency")] > 0


class _KillServerAt:
    """A control that kills the reward server when epoch ``at`` starts (its sampling runs, its scoring fails)."""

    def __init__(self, server, at: int):
        from grpo_guard.training.recording import MemoryControl

        self.inner, self.server, self.at, self.polls = MemoryControl(), server, at, 0

    def stop_requested(self) -> bool:
        self.polls += 1
        if self.polls == self.at:
            self.server.shutdown()
            self.server.server_close()
        return False

    def take_sample_now(self) -> bool:
        return False

    def take_save_now(self) -> bool:
        return False


@pytest.mark.slow
def test_a_server_killed_mid_run_fails_the_epoch_loudly_and_the_run_resumes(declared, tmp_path):
    server = make_server("toy_fg_share", "127.0.0.1", 0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    declared(toy_remote={"url": server.url, "reward": "toy_fg_share", "retries": 1, "backoff": 0.01, "timeout": 5})
    cfg = toy_config(rewards={"toy_remote": 1.0}, epochs=2)
    with pytest.raises(RewardServerError, match=f"'toy_remote' \\(http://127.0.0.1:{port}\\) failed 2 time"):
        toy_run(cfg, str(tmp_path / "ckpt"), control=_KillServerAt(server, 2))
    ckpt = os.path.join(str(tmp_path / "ckpt"), "ckpt_000001.pt")
    assert os.path.exists(ckpt), "epoch 1's checkpoint is where the run resumes"
    back = make_server("toy_fg_share", "127.0.0.1", port)  # the operator restarts the server
    threading.Thread(target=back.serve_forever, daemon=True).start()
    try:
        result, rec = toy_run(cfg, str(tmp_path / "ckpt"), resume_from=ckpt)
        _, whole = toy_run(toy_config(rewards={"toy_fg_share": 1.0}, epochs=2), str(tmp_path / "ref"))
    finally:
        back.shutdown()
        back.server_close()
    assert result.status == "succeeded" and result.step == 2
    assert rec.scalars[(2, "reward/toy_remote/mean")] == whole.scalars[(2, "reward/toy_fg_share/mean")], \
        "the resumed epoch must score what an uninterrupted in-process run scores"


class _TurnsFaulty(BaseHTTPRequestHandler):
    """Scores toy_fg_share for the server's first ``ok_calls`` requests (and again once ``healed``),
    then answers with the fault ``mode``: slow (past the timeout), garbage JSON, or NaN scores."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        _, images, prompts = parse_request(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.calls += 1
        mode = "ok" if srv.calls <= srv.ok_calls or srv.healed else srv.mode
        if mode == "slow":
            time.sleep(3.0)
        body = {"garbage": b"{not json",
                "nan": json.dumps({"protocol": PROTOCOL, "scores": [0.5] * len(images)}).replace("0.5", "NaN", 1).encode(),
                }.get(mode) or score_answer(srv.reward(images, prompts))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.slow
@pytest.mark.parametrize("mode, reason", [("slow", "no answer within the 1.5 s timeout"),
                                          ("garbage", "the body is not JSON"), ("nan", "the JSON holds NaN")])
def test_a_fault_mid_run_is_a_loud_error_no_reward_is_recorded_and_the_run_resumes(mode, reason, declared, tmp_path):
    """Eval 0, epoch 1 and eval 1 are scored; epoch 2's request meets the fault."""
    from grpo_guard.training.recording import MemoryControl, MemoryRecorder
    from grpo_guard.training.trainer import train

    server = ThreadingHTTPServer(("127.0.0.1", 0), _TurnsFaulty)
    server.daemon_threads, server.handle_error = True, lambda *a: None  # the slow answer's client has gone
    server.mode, server.calls, server.ok_calls, server.healed = mode, 0, 3, False
    server.reward = build_reward("toy_fg_share")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        declared(toy_remote={"url": url, "reward": "toy_fg_share", "retries": 1, "backoff": 0.01, "timeout": 1.5})
        cfg = toy_config(rewards={"toy_remote": 1.0}, epochs=2)
        ckpt_dir = str(tmp_path / "ckpt")
        rec = MemoryRecorder(ckpt_dir)
        with pytest.raises(RewardServerError, match=f"'toy_remote' \\({url}\\) failed 2 time\\(s\\), last: {reason}"):
            train(cfg, rec, MemoryControl())
        assert not [k for k in rec.scalars if k[0] == 2 and not k[1].startswith("reward/toy_remote/")], \
            "nothing of epoch 2 but the failure count is recorded"
        assert rec.scalars[(2, "reward/toy_remote/failures")] == 2.0 and (2, "reward/toy_remote/mean") not in rec.scalars
        assert all(v != 0 for (step, k), v in rec.scalars.items() if k == "reward/toy_remote/mean"), "never a 0"
        server.healed = True  # the operator fixes the server; the run resumes from epoch 1's checkpoint
        result, again = toy_run(cfg, ckpt_dir, resume_from=os.path.join(ckpt_dir, "ckpt_000001.pt"))
        assert result.status == "succeeded" and result.step == 2 and (2, "reward/toy_remote/mean") in again.scalars
    finally:
        server.shutdown()
        server.server_close()

"""Where reward servers are declared (GG_REWARD_SERVERS, rewards.yaml in the data directory),
and the `grpo-guard reward-server` / `grpo-guard rewards list` commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.rewards import PROBLEMS, REGISTRY, build_reward, load_extras
from grpo_guard.rewards.servers import declared_servers


@pytest.fixture
def reload_after(monkeypatch):
    yield monkeypatch
    monkeypatch.undo()
    load_extras(reload=True)


def test_rewards_yaml_in_the_data_dir_declares_servers(tmp_path, reload_after):
    reload_after.delenv("GG_REWARD_SERVERS", raising=False)
    reload_after.setenv("GG_DATA_DIR", str(tmp_path))
    (tmp_path / "rewards.yaml").write_text("servers:\n  judge:\n    url: https://judge.internal:8700/\n"
                                           "    kind: gold\n    timeout: 30\n    token_env: GG_JUDGE_TOKEN\n"
                                           "  broken:\n    url: http://x\n    timout: 3\n")
    specs, problems = declared_servers()
    assert [(s.name, s.url, s.reward, s.kind, s.timeout, s.token_env) for s in specs] == \
        [("judge", "https://judge.internal:8700", "judge", "gold", 30.0, "GG_JUDGE_TOKEN")]
    assert len(problems) == 1 and "'broken'" in problems[0] and "timout" in problems[0], problems
    load_extras(reload=True)
    assert REGISTRY["judge"].source == "server https://judge.internal:8700" and "broken" not in REGISTRY
    with pytest.raises(ValueError, match=r"needs a token in \$GG_JUDGE_TOKEN"):
        build_reward("judge")(np.zeros((1, 8, 8, 3), np.uint8), ["a cat"])
    with pytest.raises(ValueError, match="takes no options here"):
        build_reward("judge", path="/models")


def test_a_server_cannot_take_a_built_in_name_and_bad_yaml_is_one_warning(tmp_path, reload_after):
    reload_after.setenv("GG_REWARD_SERVERS", json.dumps({"servers": {"toy_fg_share": {"url": "http://h:1"}}}))
    load_extras(reload=True)
    assert REGISTRY["toy_fg_share"].source == "grpo-guard"
    assert any("toy_fg_share" in p and "taken by grpo-guard" in p for p in PROBLEMS), PROBLEMS
    bad = tmp_path / "servers.yaml"
    bad.write_text("servers: [unclosed\n")
    reload_after.setenv("GG_REWARD_SERVERS", str(bad))
    assert any("not valid YAML" in p for p in load_extras(reload=True))


def test_rewards_list_prints_kind_backbones_options_and_source():
    res = CliRunner().invoke(main, ["rewards", "list"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("toy_fg_share "))
    assert line.split()[:4] == ["toy_fg_share", "proxy", "toy", "grpo-guard"] and "tau:float" in line
    rows = json.loads(CliRunner().invoke(main, ["rewards", "list", "--json"]).output)["rewards"]
    assert {r["name"] for r in rows} >= {"unifiedreward", "geneval", "toy_alignment"}


def test_reward_server_refuses_a_public_bind_without_token_and_bad_options(monkeypatch):
    monkeypatch.delenv("GG_REWARD_SERVER_TOKEN", raising=False)
    res = CliRunner().invoke(main, ["reward-server", "--reward", "toy_fg_share", "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "without a token" in res.output
    res = CliRunner().invoke(main, ["reward-server", "--reward", "nope"])
    assert res.exit_code != 0 and "unknown reward 'nope'" in res.output
    res = CliRunner().invoke(main, ["reward-server", "--reward", "toy_fg_share", "--option", "tua=3"])
    assert res.exit_code != 0 and "did you mean 'tau'" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_reward_server_command_serves_a_registered_reward(tmp_path):
    from grpo_guard.rewards.protocol import parse_answer, score_request

    port = _free_port()
    env = {**os.environ, "GG_REWARD_SERVER_TOKEN": "t0ken", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "reward-server", "--reward", "toy_fg_share",
                             "--port", str(port), "--option", "tau=20", "--log-level", "warning"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        imgs = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
        prompts = ["a red circle on a blue background", "a green square on a white background"]
        req = urllib.request.Request(f"{base}/v1/score", data=score_request("toy_fg_share", imgs, prompts),
                                     headers={"Authorization": "Bearer t0ken", "Content-Type": "application/json"})
        scores, _ = parse_answer(urllib.request.urlopen(req, timeout=30).read(), 2)
        assert np.array_equal(scores, build_reward("toy_fg_share", tau=20)(imgs, prompts))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

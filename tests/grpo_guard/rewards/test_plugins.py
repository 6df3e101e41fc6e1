"""Reward plugins: an installed package's entry points (group ``grpo_guard.rewards``) join the
registry; a broken plugin is one warning naming it, never a crash."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.rewards import PROBLEMS, REGISTRY, build_reward, load_extras
from tests.grpo_guard.rewards.toyrun import toy_config, toy_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
EXAMPLE = os.path.join(ROOT, "examples", "reward_plugin")


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """examples/reward_plugin installed with pip into a temporary target (never the shared
    site-packages), from a copy so the build leaves nothing in the repository."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src)
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(src)], check=True,
                   capture_output=True, timeout=300)
    return str(site)


@pytest.fixture
def with_plugin(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(plugin_site)  # importlib.metadata finds its dist-info on sys.path
    load_extras(reload=True)
    yield plugin_site
    monkeypatch.undo()
    load_extras(reload=True)


def test_rewards_list_shows_the_installed_plugin(plugin_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, plugin_site])}
    out = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "rewards", "list", "--json"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)["rewards"]}
    row = rows.get("example_brightness")
    assert row is not None, "the example plugin's entry point did not reach `grpo-guard rewards list`"
    assert (row["kind"], row["options"], row["source"]) == ("proxy", {"target": "float"},
                                                             "plugin gg-reward-example 0.1.0"), row
    assert rows["toy_fg_share"]["source"] == "grpo-guard"


def test_plugins_load_lazily_on_the_first_read_of_the_registry(plugin_site):
    """Importing the registry (and config validation's module) imports no plugin; the first read
    of the registry does, in every process alike, and build_reward then calls its factory."""
    code = ("import sys, json; import grpo_guard.rewards as R, grpo_guard.config; "
            "before = 'gg_reward_example' in sys.modules; names = R.available(); "
            "after = 'gg_reward_example' in sys.modules; "
            "score = R.build_reward('example_brightness', target=0.0)(__import__('numpy').zeros((1, 4, 4, 3), 'uint8'), ['x']); "
            "print(json.dumps([before, after, 'example_brightness' in names, score.tolist()]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, plugin_site])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, True, True, [1.0]], out.stdout


def test_a_config_names_the_plugin_by_name_and_its_options_are_checked(with_plugin):
    cfg = RunConfig.from_dict({"rewards": {"example_brightness": 1.0},
                               "reward_options": {"example_brightness": {"target": 0.8}}})
    assert cfg.submit_errors() == []
    with pytest.raises(ValueError, match="target.*finite number"):
        RunConfig.from_dict({"rewards": {"example_brightness": 1.0},
                             "reward_options": {"example_brightness": {"target": "bright"}}})
    with pytest.raises(ValueError, match="never by import path"):
        RunConfig.from_dict({"rewards": {"gg_reward_example:brightness": 1.0}})


@pytest.mark.slow
def test_a_toy_epoch_trains_with_the_plugin_reward(with_plugin, tmp_path):
    cfg = toy_config(rewards={"example_brightness": 1.0}, reward_options={"example_brightness": {"target": 0.9}})
    result, rec = toy_run(cfg, str(tmp_path / "ckpt"))
    assert result.status == "succeeded" and result.step == 1
    mean = rec.scalars[(1, "reward/example_brightness/mean")]
    assert 0.0 <= mean <= 1.0 and math.isfinite(rec.scalars[(1, "loss")])
    assert REGISTRY["example_brightness"].target == "gg_reward_example:brightness"


def _fake_dist(site, name: str, entry_points: str) -> None:
    d = site / f"{name}-1.0.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (d / "entry_points.txt").write_text(f"[grpo_guard.rewards]\n{entry_points}\n")


def test_a_broken_plugin_is_one_warning_naming_it(tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    _fake_dist(site, "broken-plugin", "broken_reward = no_such_module_gg:factory\n"
                                      "toy_fg_share = also_missing:factory\nnot_callable = json:__name__\n"
                                      "exits = exits_at_import_gg:factory")
    (site / "exits_at_import_gg.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(site))
    try:
        problems = load_extras(reload=True)
        mine = [p for p in problems if "broken-plugin" in p]
        assert len(mine) == 4, problems
        assert any("'exits'" in p and "SystemExit" in p for p in mine), mine
        assert any("'broken_reward'" in p and "ModuleNotFoundError" in p for p in mine), mine
        assert any("'toy_fg_share'" in p and "taken by grpo-guard" in p for p in mine), mine
        assert any("not_callable" in p and "not callable" in p for p in mine), mine
        assert "broken_reward" not in REGISTRY and REGISTRY["toy_fg_share"].source == "grpo-guard"
        assert build_reward("toy_fg_share") is not None  # the rest of the registry still works
        for name in ("'broken_reward'", "'toy_fg_share'", "'not_callable'", "'exits'"):
            warned = [r for r in caplog.records if name in r.getMessage() and r.levelname == "WARNING"]
            assert len(warned) == 1, f"one warning naming {name}, got {[r.getMessage() for r in warned]}"
    finally:
        monkeypatch.undo()
        load_extras(reload=True)
    assert not [p for p in PROBLEMS if "broken-plugin" in p]


@pytest.mark.slow
def test_a_proxy_that_gives_nan_fails_the_epoch_naming_it(tmp_path):
    """An unparsed judge answer (unifiedreward's NaN) or a broken plugin: the epoch fails with the
    reward's name, nothing of it is trained on or recorded."""
    import numpy as np

    def half_nan(images, prompts):
        out = np.full(len(images), 0.5)
        out[::2] = np.nan
        return out

    cfg = toy_config(rewards={"toy_fg_share": 1.0})
    with pytest.raises(ValueError, match=r"proxy reward 'toy_fg_share' gave NaN or inf for 2 of 4 images"):
        toy_run(cfg, str(tmp_path / "ckpt"), rewards={"toy_fg_share": half_nan})

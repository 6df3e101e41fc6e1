"""``grpo-guard train`` and ``grpo-guard sample`` on a tiny random SD3 pipeline (in process, via
click's CliRunner), scored by the model-free ``jpeg_compressibility`` reward."""

import json
import os

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from grpo_guard.cli import main
from grpo_guard.models.testing import tiny_sd3_pipeline_dir
from grpo_guard.training.recording import read_jsonl
from tests.grpo_guard.test_trainer import one_thread  # noqa: F401  (one torch thread, autouse)

PROMPTS = ["a red circle on a blue background", "a green square on a white background"]


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_sd3_pipeline_dir(root)
    cfg = dict(backbone="sd3", model=model, algorithm="grpo_guard", resolution=32,
               num_steps=3, eval_num_steps=2,            # a few steps: the run takes about a second
               group_size=2, prompts_per_epoch=2, train_batch_size=4, epochs=3, eval_every=2,
               lora_rank=4, prompts=PROMPTS, eval_prompts=PROMPTS[:1], eval_seeds=[0],
               rewards={"jpeg_compressibility": 1.0}, gold=[])
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(config_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    res = CliRunner().invoke(main, ["train", config_path, "--epochs", "2", "--set", "eval_every=1",
                                    "--out", str(out)], catch_exceptions=False)
    return res, out


def test_train_cli_writes_a_run_directory(trained):
    res, out = trained
    assert res.exit_code == 0, res.output
    assert "succeeded after 2 epochs" in res.output
    scalars = read_jsonl(str(out / "scalars.jsonl"))
    steps = {r["step"] for r in scalars}
    assert steps == {0, 1, 2}, "eval at 0, training + eval at 1 and 2 (--epochs and --set override the YAML)"
    assert any("reward/jpeg_compressibility/mean" in r for r in scalars)
    assert read_jsonl(str(out / "step_stats.jsonl")), "per-step statistics were not written"
    assert os.listdir(out / "samples") and (out / "config.yaml").exists()
    ckpts = read_jsonl(str(out / "checkpoints.jsonl"))
    assert ckpts and os.path.exists(ckpts[-1]["path"])
    assert json.loads((out / "progress.json").read_text()) == {"step": 2, "total": 2}


def test_train_cli_resumes_from_a_checkpoint(trained, config_path):
    _, out = trained
    res = CliRunner().invoke(main, ["train", config_path, "--epochs", "3", "--out", str(out),
                                    "--resume", str(out / "checkpoints")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "succeeded after 3 epochs" in res.output
    steps = sorted(r["step"] for r in read_jsonl(str(out / "scalars.jsonl")) if "reward/total/mean" in r)
    assert steps == [1, 2, 3], "a resumed run neither repeats nor skips an epoch"


def test_sample_cli_writes_a_png(trained, config_path, tmp_path):
    _, out = trained
    png = tmp_path / "a.png"
    res = CliRunner().invoke(main, ["sample", "--config", config_path, "--prompt", PROMPTS[0], "--seed", "3",
                                    "--steps", "2", "--out", str(png)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert Image.open(png).size == (32, 32)
    png2 = tmp_path / "b.png"
    res = CliRunner().invoke(main, ["sample", "--checkpoint", str(out / "checkpoints"), "--prompt", PROMPTS[0],
                                    "--seed", "3", "--out", str(png2)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert Image.open(png2).size == (32, 32)


def test_corrupt_checkpoint_is_one_clear_sentence(config_path, tmp_path):
    bad = tmp_path / "ckpt_000001.pt"
    bad.write_bytes(b"\x00garbage")
    for args in (["sample", "--checkpoint", str(bad), "--prompt", "x", "--out", str(tmp_path / "x.png")],
                 ["train", config_path, "--out", str(tmp_path / "r"), "--resume", str(bad)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 1, res.output
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("Error: checkpoint") and "cannot be read" in line, res.output
        assert "Traceback" not in res.output


def test_unknown_reward_is_a_clean_error(config_path, tmp_path):
    res = CliRunner().invoke(main, ["train", config_path, "--set", "rewards={nope: 1.0}", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "unknown reward 'nope'" in res.output, res.output


@pytest.mark.slow
def test_train_with_num_gpus_2_launches_two_ranks_and_rank_0_alone_writes(config_path, tmp_path):
    """`grpo-guard train` with num_gpus 2 starts itself under `accelerate launch` (2 CPU processes,
    gloo, here): the run directory gets each epoch's rows once, from rank 0."""
    import subprocess
    import sys

    out = tmp_path / "run2"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "train", config_path, "--epochs", "2",
                           "--set", "num_gpus=2", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accelerate.commands.launch" in proc.stderr and "succeeded after 2 epochs" in proc.stdout
    rows = read_jsonl(str(out / "scalars.jsonl"), dedupe=False)
    losses = [r["step"] for r in rows if "grad_norm" in r]
    assert losses == [1, 2], "each epoch's training scalars are written exactly once"
    assert json.loads((out / "progress.json").read_text()) == {"step": 2, "total": 2}
    assert not (out / ".stop-requested").exists()


def test_a_rank_stops_when_the_launchers_stop_file_appears(tmp_path, monkeypatch):
    from grpo_guard.cli.train import STOP_FILE_ENV, _SignalControl

    stop = tmp_path / "stop"
    monkeypatch.setenv(STOP_FILE_ENV, str(stop))
    control = _SignalControl()
    try:
        assert not control.stop_requested()
        stop.touch()
        assert control.stop_requested()
    finally:
        control.restore()

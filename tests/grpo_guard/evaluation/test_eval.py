"""``grpo-guard eval`` end to end on the toy backbone (tiny random detector and CLIP for GenEval):
stored rows, the base column reused, the paper-style table, and bad input refused in one sentence
before anything loads or is stored."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.config import RunConfig
from grpo_guard.evaluation.benchmarks import get_benchmark
from grpo_guard.evaluation.table import markdown, table_rows
from grpo_guard.store import evaluations as ev
from grpo_guard.store import queries
from tests.grpo_guard.test_trainer import one_thread  # noqa: F401  (one torch thread, autouse)
from tests.storehelpers import backend_env

PROMPTS = ["a red circle on a blue background", "a green square on a yellow background"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with backend_env("sqlite", tmp_path_factory.mktemp("eval-store")) as url:
        yield url


@pytest.fixture(scope="module")
def toy_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    path = d / "toy.yaml"
    path.write_text(RunConfig.from_dict({"eval_num_steps": 4, "eval_prompts": PROMPTS}).to_yaml())
    return str(path), f"file:{d / 'prompts.txt'}"


@pytest.fixture(scope="module")
def sd3_config(tmp_path_factory):
    """A tiny random SD3 pipeline's config: the real-image benchmarks (geneval, preference) refuse
    the toy backbone, whose images their scorers do not score."""
    from grpo_guard.models.testing import tiny_sd3_pipeline_dir

    d = tmp_path_factory.mktemp("sd3cfg")
    path = d / "sd3.yaml"
    path.write_text(RunConfig.from_dict({"backbone": "sd3", "model": tiny_sd3_pipeline_dir(d), "resolution": 32,
                                         "eval_num_steps": 2, "rewards": {"jpeg_compressibility": 1.0},
                                         "gold": ["jpeg_incompressibility"], "lora_rank": 4}).to_yaml())
    return str(path)


def test_geneval_overall_is_the_mean_of_the_family_accuracies():
    bench = get_benchmark("geneval")
    # 4 single_object images all right, 2 counting images wrong, 2 position half right
    strict = [1, 1, 1, 1, 0, 0, 1, 0]
    tags = ["single_object"] * 4 + ["counting"] * 2 + ["position"] * 2
    got = bench.summarize({"geneval": strict}, tags)
    assert got == {"overall": pytest.approx((1 + 0 + 0.5) / 3), "single_object": 1.0, "counting": 0.0,
                   "position": 0.5, "image_mean": 5 / 8}
    assert bench.metric_names(["position", "counting"]) == ["overall", "counting", "position", "image_mean"]


def test_table_rows_and_markdown_relative_to_base():
    rows = table_rows(["overall", "counting"], {"overall": 0.5, "counting": 0.0}, {"overall": 0.75, "counting": 0.2})
    assert rows[0] == {"metric": "overall", "base": 0.5, "model": 0.75, "relative": 1.5}
    assert math.isnan(rows[1]["relative"]), "relative to a base of 0 is undefined"
    md = markdown("geneval", rows)
    assert "| overall | 0.5000 | 0.7500 | 1.50 |" in md and "| counting | 0.0000 | 0.2000 | — |" in md
    assert "relative to base (base = 1.00)" in md


def _eval(*args):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def test_base_then_checkpoint_reuses_the_base_and_writes_the_table(store, toy_config, tmp_path):
    import torch

    from grpo_guard.models import build_backbone
    from grpo_guard.store.recorder import StoreRecorder
    from grpo_guard.training.checkpoint import Checkpoint, save_checkpoint

    cfg_path, prompts = toy_config
    base = _eval("--benchmark", "toy", "--config", cfg_path, "--prompts", prompts, "--images-per-prompt", "2")
    assert base.exit_code == 0, base.output
    (row,) = ev.list_evaluations()
    assert row.model.kind == "base" and row.status == "succeeded" and row.protocol["images_per_prompt"] == 2
    assert len(row.metrics) == 3 and f"| toy_alignment | {row.metrics['toy_alignment']:.4f} |" in base.output
    again = _eval("--benchmark", "toy", "--config", cfg_path, "--prompts", prompts, "--images-per-prompt", "2")
    assert f"evaluation {row.id} (reused)" in again.output and len(ev.list_evaluations()) == 1
    assert "### toy — base toy\n" in again.output

    # a run with a checkpoint whose LoRA moved the model a little
    config = RunConfig.from_file(cfg_path)
    rid = queries.create_run(config)
    bb = build_backbone(config, device="cpu")
    bb.add_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in bb.trainable_state_dict().items()}
    rec = StoreRecorder(rid)
    path = save_checkpoint(rec.checkpoint_dir(), Checkpoint(step=3, config=config, trainable=state, ema=None,
                                                             optimizer=None))
    rec.log_checkpoint(3, path, {"best_step": 3})
    rec.close()
    out = tmp_path / "out"
    res = _eval("--benchmark", "toy", "--run", str(rid), "--step", "last", "--prompts", prompts,
                "--images-per-prompt", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = ev.list_evaluations()
    assert len(rows) == 2, "the base result was reused, not computed again"
    mine = ev.evaluations_of([rid], per_prompt=True)[0]
    assert mine.model.step == 3 and mine.protocol_hash == row.protocol_hash
    table = json.loads((out / "table.json").read_text())
    assert table["base_evaluation_id"] == row.id and table["evaluation_id"] == mine.id
    for r in table["rows"]:
        assert r["base"] == pytest.approx(row.metrics[r["metric"]]) and r["model"] == pytest.approx(mine.metrics[r["metric"]])
    assert [p["prompt"] for p in mine.per_prompt] == PROMPTS and len(mine.per_prompt[0]["images"]) == 2
    from grpo_guard.store import artifacts

    assert all(artifacts.resolve(loc) for p in mine.per_prompt for loc in p["images"])
    assert (out / "table.md").read_text().startswith("### toy")
    # a pruned step: one sentence, nothing stored
    res = _eval("--benchmark", "toy", "--run", str(rid), "--step", "7")
    assert res.exit_code == 1 and f"Run {rid} has no checkpoint at step 7 on disk" in res.output
    assert "kept: 3" in res.output and len(ev.list_evaluations()) == 2


@pytest.mark.parametrize("args, message", [
    (["--benchmark", "nope", "--config", "CFG"], "Unknown benchmark 'nope'; known: geneval, ocr, preference, toy"),
    (["--benchmark", "preference", "--config", "CFG"], "The preference benchmark needs --prompts"),
    (["--benchmark", "geneval", "--config", "SD3", "--prompts", "toy:heldout"], "needs GenEval metadata"),
    (["--benchmark", "toy", "--checkpoint", "/nope/ckpt_000001.pt"], "No checkpoint file at /nope/ckpt_000001.pt."),
    (["--benchmark", "toy", "--run", "999"], "No run with id 999 in the store."),
    (["--benchmark", "toy", "--config", "CFG", "--images-per-prompt", "0"], "--images-per-prompt must be between"),
    (["--benchmark", "ocr", "--config", "CFG"], "scores with ocr, which does not score toy images"),
    (["--benchmark", "preference", "--config", "CFG", "--prompts", "toy:heldout"], "does not score toy images"),
])
def test_bad_input_is_one_sentence_and_stores_nothing(store, toy_config, sd3_config, args, message):
    before = len(ev.list_evaluations())
    paths = {"CFG": toy_config[0], "SD3": sd3_config}
    res = CliRunner().invoke(main, ["eval", *[paths.get(a, a) for a in args]])
    assert res.exit_code != 0
    if message:
        assert message in res.output and "Traceback" not in res.output
    assert len(ev.list_evaluations()) == before


def test_geneval_benchmark_with_tiny_detector_and_clip(store, sd3_config, tmp_path, monkeypatch):
    from grpo_guard.rewards.testing import tiny_clip_dir, tiny_mask2former_dir

    monkeypatch.setenv("GG_REWARD_GENEVAL_DETECTOR_PATH", tiny_mask2former_dir(tmp_path))
    monkeypatch.setenv("GG_REWARD_GENEVAL_CLIP_PATH", tiny_clip_dir(tmp_path))
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(json.dumps(r) for r in [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
         "prompt": "a photo of two cats"},
        {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a photo of a red cup"},
    ]) + "\n")
    res = _eval("--benchmark", "geneval", "--config", sd3_config, "--prompts", f"geneval:file:{meta}",
                "--images-per-prompt", "2")
    assert res.exit_code == 0, res.output
    row = ev.list_evaluations()[0]
    assert row.benchmark == "geneval" and row.protocol["detector_scale"] == [1333, 800]
    row = ev.get_evaluation(row.id)
    fams = {p["tag"]: p["geneval"] for p in row.per_prompt}
    assert set(row.metrics) == {"overall", "single_object", "counting", "colors", "image_mean"}
    assert row.metrics["overall"] == pytest.approx(np.mean(list(fams.values())))
    assert row.metrics["image_mean"] == pytest.approx(np.mean([p["geneval"] for p in row.per_prompt]))
    lines = res.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| metric |"))
    assert lines[head + 2].startswith(f"| overall | {row.metrics['overall']:.4f} |"), "Overall leads the table"


def test_submit_queues_a_row_and_the_worker_task_fills_it(store, toy_config):
    from grpo_guard.evaluation.runner import execute_queued

    cfg_path, prompts = toy_config
    res = _eval("--benchmark", "toy", "--config", cfg_path, "--prompts", prompts, "--images-per-prompt", "1",
                "--submit")
    assert res.exit_code == 0, res.output
    eid = int(res.output.strip().splitlines()[-1])
    assert ev.get_evaluation(eid).status == "queued", "the command thread computes nothing"
    assert execute_queued(eid) == "succeeded" and execute_queued(eid) == "skipped"
    row = ev.get_evaluation(eid)
    assert row.status == "succeeded" and set(row.metrics) == {"toy_alignment", "toy_fidelity", "toy_palette_purity"}


def test_a_queued_evaluation_whose_scorers_cannot_be_built_says_why_on_its_row(store, toy_config, monkeypatch):
    """The scorers are built before the row's own try: the row once stayed ``running`` for ever."""
    from grpo_guard.evaluation import runner

    cfg_path, prompts = toy_config
    res = _eval("--benchmark", "toy", "--config", cfg_path, "--prompts", prompts, "--images-per-prompt", "1",
                "--submit")
    eid = int(res.output.strip().splitlines()[-1])

    def no_scorers(request):
        raise OSError("the scorer's weights are not readable")

    monkeypatch.setattr(runner, "build_scorers", no_scorers)
    assert runner.execute_queued(eid) == "failed"
    row = ev.get_evaluation(eid)
    assert (row.status, row.error) == ("failed", "OSError: the scorer's weights are not readable")


def _cached(repo):
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        return None


@pytest.mark.skipif(not (_cached("facebook/mask2former-swin-small-coco-instance")
                         and _cached("openai/clip-vit-large-patch14")),
                    reason="the real GenEval detector and CLIP are not both in the local HF cache")
def test_geneval_benchmark_with_the_real_weights(store, sd3_config, tmp_path):
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text(json.dumps({"tag": "single_object", "include": [{"class": "dog", "count": 1}],
                                "prompt": "a photo of a dog"}) + "\n")
    res = _eval("--benchmark", "geneval", "--config", sd3_config, "--prompts", f"geneval:file:{meta}",
                "--images-per-prompt", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    row = ev.get_evaluation(ev.list_evaluations()[0].id)
    assert row.metrics["overall"] == row.metrics["single_object"] in (0.0, 1.0)


def _run_with_checkpoints(config, proxies: dict[int, float], ckpt_steps, pair_id=None) -> int:
    import torch

    from grpo_guard import metrics as M
    from grpo_guard.models import build_backbone
    from grpo_guard.store.recorder import StoreRecorder
    from grpo_guard.training.checkpoint import Checkpoint, save_checkpoint

    rid = queries.create_run(config, pair_id=pair_id)
    bb = build_backbone(config, device="cpu")
    bb.add_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
    rec = StoreRecorder(rid)
    for step, v in proxies.items():
        rec.log_scalars(step, {M.EVAL_PROXY: v})
    for step in ckpt_steps:
        state = {k: v + 0.01 * step * torch.randn_like(v) for k, v in bb.trainable_state_dict().items()}
        path = save_checkpoint(rec.checkpoint_dir(), Checkpoint(step=step, config=config, trainable=state, ema=None,
                                                                 optimizer=None))
        rec.log_checkpoint(step, path, {"best_step": step})
    rec.close()
    return rid


def test_a_paired_run_also_gets_its_partner_at_equal_proxy(store, toy_config, tmp_path):
    cfg_path, prompts = toy_config
    config = RunConfig.from_file(cfg_path)
    mine = _run_with_checkpoints(config, {0: 0.1, 4: 0.5, 8: 0.9}, [4], pair_id="pair-eq")
    # the partner reaches proxy 0.5 around step 6: its checkpoint there is the one compared
    other = _run_with_checkpoints(config, {0: 0.1, 2: 0.2, 6: 0.52, 10: 0.8}, [2, 6, 10], pair_id="pair-eq")
    out = tmp_path / "eq"
    res = _eval("--benchmark", "toy", "--run", str(mine), "--step", "4", "--prompts", prompts,
                "--images-per-prompt", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    (eq,) = json.loads((out / "table.json").read_text())["equal_proxy"]
    assert (eq["run"], eq["step"], eq["proxy"], eq["this_proxy"]) == (other, 6, 0.52, 0.5)
    partner = ev.get_evaluation(eq["evaluation_id"])
    assert partner.model.run_id == other and partner.model.step == 6
    assert eq["rows"][0]["model"] == pytest.approx(partner.metrics["toy_alignment"])
    assert "at equal proxy: run #" in (out / "table.md").read_text()


def test_missing_scorer_weights_are_one_sentence_before_any_model_loads(store, sd3_config, tmp_path, monkeypatch):
    empty = tmp_path / "no-detector"
    empty.mkdir()
    monkeypatch.setenv("GG_REWARD_GENEVAL_DETECTOR_PATH", str(empty))
    before = len(ev.list_evaluations())
    res = CliRunner().invoke(main, ["eval", "--benchmark", "geneval", "--config", sd3_config])
    assert res.exit_code == 1 and "Mask2Former detector" in res.output and "Traceback" not in res.output
    assert len(ev.list_evaluations()) == before


def test_preference_scores_the_five_and_the_configs_other_gold_evaluators(store, toy_config, sd3_config, tmp_path,
                                                                           monkeypatch):
    """Flow-GRPO's five preference scorers, then every other gold evaluator the model's config
    names (here a model-free one), each a mean over the prompt set; the pages' tables keep them all."""
    from types import SimpleNamespace

    import torch

    from grpo_guard.evaluation.benchmarks import for_config
    from grpo_guard.rewards.testing import tiny_blip_dir, tiny_clip_dir, tiny_mlp_head_state

    clip = tiny_clip_dir(tmp_path)
    head = tmp_path / "aesthetic_head.pth"
    torch.save(tiny_mlp_head_state(32), head)
    for var, value in {"PICKSCORE_PATH": clip, "CLIPSCORE_PATH": clip, "HPSV2_PATH": clip, "AESTHETIC_PATH": clip,
                       "AESTHETIC_HEAD": str(head), "IMAGEREWARD_PATH": tiny_blip_dir(tmp_path)}.items():
        monkeypatch.setenv(f"GG_REWARD_{var}", value)
    cfg = sd3_config
    five = ("pickscore", "imagereward", "aesthetic", "clipscore", "hpsv2")
    bench = for_config(get_benchmark("preference"), SimpleNamespace(gold=["hpsv2", "mine", "mine"]))
    assert for_config(get_benchmark("preference"), RunConfig.from_file(cfg)).scorers == (*five, "jpeg_incompressibility")
    assert bench.scorers == (*five, "mine"), "hpsv2 is one of the five already"
    assert get_benchmark("preference").scorers == five, "the registry's benchmark is not changed"
    assert for_config(get_benchmark("toy"), SimpleNamespace(gold=["mine"])).scorers == get_benchmark("toy").scorers
    out = tmp_path / "pref"
    res = _eval("--benchmark", "preference", "--config", cfg, "--prompts", toy_config[1], "--out", str(out))
    assert res.exit_code == 0, res.output
    row = ev.get_evaluation(json.loads((out / "table.json").read_text())["evaluation_id"])
    assert list(row.metrics) == [*five, "jpeg_incompressibility"] and row.protocol["images_per_prompt"] == 1
    for name in row.metrics:
        assert row.metrics[name] == pytest.approx(np.mean([p[name] for p in row.per_prompt])), name
    assert [r["metric"] for r in json.loads((out / "table.json").read_text())["rows"]] == list(row.metrics)
    from app.pages.evaluation_tables import _metrics

    assert _metrics("preference", [row]) == [*five, "jpeg_incompressibility"]


def test_a_sigterm_as_the_row_is_inserted_still_removes_it(store, toy_config, monkeypatch):
    """CI sent SIGTERM just as a foreground evaluation's row appeared: the signal landed after the
    insert and before the clean-up that deletes the row was in place, and the row stayed. The
    insert now holds SIGINT/SIGTERM; here a real SIGTERM arrives inside it."""
    import os
    import signal

    from grpo_guard.evaluation import runner
    from grpo_guard.evaluation.request import build_request

    request = build_request("toy", config_path=toy_config[0], prompts=toy_config[1], images_per_prompt=1).base()
    real = ev.create_evaluation

    def create_then_signalled(*args, **kwargs):
        eid = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # held until the insert's caller has the id
        return eid

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    monkeypatch.setattr(ev, "create_evaluation", create_then_signalled)
    before = {r.id for r in ev.list_evaluations()}
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(SystemExit):
            runner.evaluate_one(request, reuse=False, keep_failed=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert {r.id for r in ev.list_evaluations()} == before, "the row of the stopped evaluation is gone"


def test_a_foreground_evaluation_stopped_by_sigterm_leaves_nothing_stored(tmp_path):
    """A timeout or a closed session sends SIGTERM: the row and images go, as on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.storehelpers import backend_env

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(RunConfig.from_dict({"eval_num_steps": 20}).to_yaml())
    with backend_env("sqlite", tmp_path / "store") as _:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "eval", "--benchmark", "toy", "--config",
                                 str(cfg), "--images-per-prompt", "16"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 180
            while not ev.list_evaluations() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [r.status for r in ev.list_evaluations()] == ["running"], proc.poll()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
        assert ev.list_evaluations() == [], "the stopped evaluation's row is gone"
        images = tmp_path / "store" / "artifacts" / "evaluations"
        assert not images.exists() or not any(images.rglob("*.png")), "and so are its images"

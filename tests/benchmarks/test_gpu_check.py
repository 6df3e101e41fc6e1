"""The GPU check (``benchmarks/gpu/check.sh``): its ``--tiny`` run on the CPU writes every figure the
READMEs quote, the correctness pass really compares the device computation with the float64
reference, the resume check really resumes, a second call continues instead of starting over;
and the pieces a GPU run depends on (peak-rate table, core pinning, the runner's deadline)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "benchmarks", "gpu", "check.sh")


def load(name: str, *parts: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", *parts))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def call_check(out) -> subprocess.CompletedProcess:
    # A generous budget: the time boxes are for the GPU; a loaded CI machine must not trip them.
    return subprocess.run(["bash", CHECK, "--tiny", "--out", str(out), "--budget-seconds", "900"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpucheck")
    proc = call_check(out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out, json.loads((out / "check.json").read_text())


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_tiny_check_writes_every_stage_with_finite_figures(tiny_check):
    out, state = tiny_check
    assert state["tiny"] is True
    assert {n: s["status"] for n, s in state["stages"].items()} == {
        "backbones": "done", "correctness": "done", "overopt": "done"}
    bench = state["stages"]["backbones"]["results"]
    assert [(r["backbone"], r["algorithm"]) for r in bench] == [
        ("sd3", "flow_grpo"), ("sd3", "grpo_guard"), ("flux", "dance_grpo"), ("flux", "dance_grpo_guard")]
    for r in bench:
        for key in ("sampling_images_per_s", "update_s_per_denoising_step", "update_tflops", "update_hw_tflops"):
            assert finite(r[key]) and r[key] > 0, (r["backbone"], r["algorithm"], key, r[key])
        flops = r["update_flops"]
        assert 0 < flops["forward_flops"] < flops["model_flops"] <= flops["executed_flops"]
        assert r["mfu"] is None and "no GPU" in r["peak_note"], "on the CPU MFU must be null, not guessed"
    md = (out / "check.md").read_text()
    for heading in ("## 1. Backbones", "## 2. Correctness", "## 3. Toy over-optimisation", "no-signal proxy"):
        assert heading in md


def test_correctness_pass_compares_values_and_gradients_within_stated_tolerances(tiny_check):
    _, state = tiny_check
    rows = state["stages"]["correctness"]["result"]["step_math"]
    assert [r["setting"] for r in rows] == ["flow_grpo", "grpo_guard"]
    for r in rows:
        assert set(r["errors"]) == {"log_prob", "mean", "std", "loss", "per_sample", "grad_velocity"}
        # float32 (under bf16 autocast) against float64 differs, so a zero error would mean one
        # computation was compared with itself.
        assert all(finite(e) and 0 < e <= r["rtol"] for e in r["errors"].values()), r["errors"]
        assert 0 < r["log_ratio_error_over_clip_range"] <= r["log_ratio_tol"]
        assert 0 < r["rows_clipped"] < r["rows"], "the gradient must be compared on clipped and unclipped rows"
        assert r["passed"]


def test_resume_check_stops_resumes_and_matches_every_scalar(tiny_check):
    _, state = tiny_check
    rs = state["stages"]["correctness"]["result"]["resume"]
    assert (rs["stopped_status"], rs["stopped_at"], rs["resumed_status"], rs["resumed_to"]) == (
        "cancelled", 1, "succeeded", 2)
    assert rs["resumed_from"].startswith("ckpt_")
    assert rs["resumed_epochs_compared"] == [2], "the epochs after the stop must be among those compared"
    assert rs["scalars_compared"] > 10 and rs["exactly_equal"] == rs["scalars_compared"]
    assert rs["keys_only_in_one_run"] == 0 and rs["passed"]


def test_overopt_stage_runs_both_algorithms_and_their_controls(tiny_check):
    out, state = tiny_check
    st = state["stages"]["overopt"]
    assert set(st["arms"]) == {"flow_grpo_paper", "grpo_guard_paper", "flow_grpo_paper_null", "grpo_guard_paper_null"}
    assert all(done == total == 1 for done, total in st["epochs"].values()), st["epochs"]
    summary = json.loads((out / "overopt" / "summary.json").read_text())
    assert set(summary) >= set(st["arms"])


def test_a_second_call_continues_instead_of_starting_over(tiny_check):
    out, _ = tiny_check
    t = time.monotonic()
    proc = call_check(out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("done in an earlier call, skipped") == 3
    assert time.monotonic() - t < 60
    assert len(json.loads((out / "check.json").read_text())["calls"]) == 2


def test_step_math_check_fails_a_device_that_rounds_the_step_to_bf16(monkeypatch):
    """The tolerances separate float32 step math from bf16: latents rounded to bf16 on the device
    side (as autocast reaching the step would do) fail both settings."""
    import grpo_guard.sde as sde

    correctness = load("gpu_correctness", "gpu", "correctness.py")
    real = sde.sde_step

    def bf16_step(velocity, latents, *args, **kw):
        if velocity.dtype == torch.float32:  # the device side; the reference is float64
            latents = latents.to(torch.bfloat16).float()
        return real(velocity, latents, *args, **kw)

    monkeypatch.setattr(sde, "sde_step", bf16_step)
    rows = correctness.step_math_check("cpu", tiny=True)
    assert [r["passed"] for r in rows] == [False, False]
    assert all(r["errors"]["mean"] > 10 * r["rtol"] for r in rows)


def test_peak_rate_comes_from_the_gpu_name_and_is_null_when_unknown():
    flops = load("gpu_flops", "gpu", "flops.py")
    assert flops.peak_bf16_tflops("NVIDIA H100 80GB HBM3")[0] == 989
    assert flops.peak_bf16_tflops("NVIDIA H100 PCIe")[0] == 756
    assert flops.peak_bf16_tflops("NVIDIA H200")[0] == 989
    assert flops.peak_bf16_tflops("NVIDIA GH200 480GB")[0] == 989
    assert flops.peak_bf16_tflops("NVIDIA A100-SXM4-80GB")[0] == 312
    assert flops.peak_bf16_tflops("NVIDIA L40S")[0] == 362
    peak, note = flops.peak_bf16_tflops("Tesla T4")
    assert peak is None and "MFU is null" in note


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks", "overoptimization"))
    return load("overopt_run", "overoptimization", "run.py")


def test_each_run_gets_its_own_share_of_the_cores(runner, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    slots = runner.core_slots(12)
    assert len(slots) == 12 and all(1 <= len(s) <= 2 for s in slots)
    flat = [c for s in slots for c in s]
    assert sorted(flat) == list(range(16)), "every core used once"
    assert runner.core_slots(20)[16:] == [[0], [1], [2], [3]], "more runs than cores: one core each, round-robin"


STOPPABLE = """import os, signal, sys, time
signal.signal(signal.SIGINT, lambda *a: (open(os.path.join(sys.argv[1], "stopped"), "w").close(), sys.exit(0)))
time.sleep(60)
sys.exit(3)
"""


def test_deadline_stops_running_runs_cleanly_and_starts_no_more(runner, monkeypatch, tmp_path):
    """At the deadline every running run gets Ctrl-C (``grpo-guard train`` then checkpoints after
    its epoch and exits) and the runs not yet started wait for the next call."""
    monkeypatch.setattr(runner, "command", lambda arm, seed, path, epochs, overrides: [sys.executable, "-c",
                                                                                    STOPPABLE, path])
    t = time.monotonic()
    failed = runner.run_all(["flow_grpo_paper", "grpo_guard_paper", "flow_grpo_paper_null"], [0], str(tmp_path), 2,
                            None, deadline=time.time() + 3)
    assert time.monotonic() - t < 30
    assert failed == [], "a run stopped at the deadline is not a failure"
    started = sorted(os.listdir(tmp_path / "runs"))
    assert started == ["flow_grpo_paper_seed0", "grpo_guard_paper_seed0"]
    assert all((tmp_path / "runs" / d / "stopped").exists() for d in started)


def test_packed_results_unpack_to_the_same_files(tiny_check, tmp_path):
    """What comes back from the device (at most 8 files) restores the results folder, checkpoints
    included, so a later call on a fresh machine can continue the runs."""
    out, _ = tiny_check
    subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "pack.sh"), str(tmp_path / "back"), str(out)],
                   check=True, capture_output=True)
    back = sorted(os.listdir(tmp_path / "back"))
    assert len(back) <= 8 and {"check.md", "check.json", "results.tgz"} <= set(back)
    (tmp_path / "here").mkdir()
    for f in back:
        if f.endswith(".tgz"):
            subprocess.run(["tar", "xzf", str(tmp_path / "back" / f), "-C", str(tmp_path / "here")], check=True)

    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    assert files(tmp_path / "here" / out.name) == files(out)


def test_a_crashing_run_is_reported_as_failed(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "command", lambda *a: [sys.executable, "-c", "raise SystemExit(3)"])
    failed = runner.run_all(["flow_grpo_paper"], [0], str(tmp_path), 1, None)
    assert failed == [os.path.join(str(tmp_path), "runs", "flow_grpo_paper_seed0")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_full_check_refuses_in_one_sentence(tmp_path):
    proc = subprocess.run(["bash", CHECK, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("check: no CUDA GPU is visible")
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path), "nothing is written"

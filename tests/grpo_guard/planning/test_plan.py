"""The memory plan: estimates within 10 % of the measured peak of live CPU tensors (toy, tiny SD3,
tiny FLUX), the CLI's verdict and JSON, the worker-side helpers."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from grpo_guard.config import RunConfig
from grpo_guard.planning import gpus
from grpo_guard.planning.runtime import CPU_AUTO_ROWS, refusal, resolve_rows_per_forward
from grpo_guard.planning.spec import PlanError, spec_for

SMALL = {"group_size": 4, "prompts_per_epoch": 2, "train_batch_size": 4, "num_steps": 4, "eval_num_steps": 2,
         "timestep_fraction": 0.99, "epochs": 2, "sample_batch_size": 8, "update_rows_per_forward": 6}


@pytest.fixture(autouse=True)
def plan_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GG_PLAN_CACHE", str(tmp_path_factory.getbasetemp() / "plan-cache"))  # shared by the session
    monkeypatch.delenv("GG_GPU_MEMORY_GIB", raising=False)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _validate(cfg: RunConfig) -> tuple[int, int]:
    from grpo_guard.models import build_backbone
    from grpo_guard.planning.validate import measured_update_peak, planned_update_peak

    bb = build_backbone(cfg, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb.add_lora(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    return planned_update_peak(cfg), measured_update_peak(cfg, bb)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["toy", "sd3", "flux"])
def test_estimate_is_within_10_percent_of_the_measured_cpu_peak(kind, tmp_path, one_thread):
    from grpo_guard.models import testing

    if kind == "toy":
        cfg = RunConfig.from_dict({**SMALL, "backbone": "toy", "lora_rank": 0, "update_rows_per_forward": "auto"})
    else:
        path = (testing.tiny_sd3_pipeline_dir if kind == "sd3" else testing.tiny_flux_pipeline_dir)(tmp_path)
        cfg = RunConfig.from_dict({**SMALL, "backbone": kind, "model": path, "lora_rank": 4, "resolution": 32,
                                   "update_rows_per_forward": "auto", "kl_beta": 0.0})
    est, meas = _validate(cfg)   # auto on a CPU: all rows of the micro-batch in one forward
    assert meas > 0 and abs(est - meas) <= 0.10 * meas, (kind, est, meas)


def test_shipped_architectures_are_chosen_by_hub_id():
    base = {"prompts": "toy:train"}
    assert spec_for(RunConfig.from_dict({**base, "backbone": "sd3", "model": "stabilityai/stable-diffusion-3.5-medium"})).name == "SD3.5-Medium"
    assert spec_for(RunConfig.from_dict({**base, "backbone": "sd3", "model": "stabilityai/stable-diffusion-3.5-large"})).name == "SD3.5-Large"
    assert spec_for(RunConfig.from_dict({**base, "backbone": "flux", "model": "black-forest-labs/FLUX.1-dev"})).name == "FLUX.1-dev"
    with pytest.raises(PlanError, match="no architecture is known"):
        spec_for(RunConfig.from_dict({**base, "backbone": "sd3", "model": "someone/other-model"}))


def test_cli_plans_the_toy_and_refuses_a_tiny_gpu(tmp_path):
    from grpo_guard.cli import main

    path = tmp_path / "toy.yaml"
    path.write_text("backbone: toy\n" + "".join(f"{k}: {v}\n" for k, v in SMALL.items()))
    r = CliRunner().invoke(main, ["plan", str(path), "--gpu", "4090"])
    assert r.exit_code == 0, r.output
    assert "FITS" in r.output and "update rows per forward: 6" in r.output and "GPU-hours" in r.output
    r = CliRunner().invoke(main, ["plan", str(path), "--gpu-memory", "0.5", "--json"])
    assert r.exit_code == 1, r.output
    data = json.loads(r.output)
    assert data["fits"] is False and data["gpu_memory_gib"] == 0.5 and data["rows_per_forward"] == 6
    assert set(data["phases"]) == {"sampling", "rewards", "update"} and data["peak_gib"] > 0
    r = CliRunner().invoke(main, ["plan", str(path), "--set", "update_rows_per_forward=0"])
    assert r.exit_code == 2 and "update_rows_per_forward" in r.output


def test_auto_takes_cpu_chunks_without_a_gpu_and_fewer_rows_on_a_small_one(monkeypatch):
    cfg = RunConfig.from_dict({**SMALL, "update_rows_per_forward": "auto"})
    assert resolve_rows_per_forward(cfg, "cpu")[0] == CPU_AUTO_ROWS                 # host memory bounded
    assert refusal(cfg, "cpu") is None                                    # no GPU: nothing to refuse
    assert resolve_rows_per_forward(cfg.with_overrides({"update_rows_per_forward": 6}), "cpu")[0] == 6
    monkeypatch.setenv("GG_GPU_MEMORY_GIB", "1.03")                       # just above the 1 GiB margin
    rows, how = resolve_rows_per_forward(cfg, "cpu")
    assert rows is not None and 2 <= rows < 2 * 4 * 3 and "fit the 1.03 GiB GPU" in how
    why = refusal(cfg.with_overrides({"update_rows_per_forward": 6}), "cpu")
    assert why and "does not fit" in why and "1.03 GiB" in why and "update_rows_per_forward" in why
    assert gpus.env_gpu_memory() == 1.03


GPU_EXAMPLES = ["sd35m_grpo_guard", "sd35m_flow_grpo", "sd35m_geneval_grpo_guard", "sd35m_geneval_flow_grpo",
                "sd35m_pickscore_grpo_guard", "flux_dance_grpo_guard"]


@pytest.mark.slow
def test_every_shipped_gpu_example_plans_as_fitting_an_80gb_gpu(monkeypatch):
    """`grpo-guard plan` on each shipped GPU example (full-size architectures, fake tensors; the
    examples sharing a transformer setting share its measurement through the plan cache)."""
    import os

    from grpo_guard.cli import main

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples")
    for name in GPU_EXAMPLES:
        r = CliRunner().invoke(main, ["plan", os.path.join(root, f"{name}.yaml"), "--gpu", "h100", "--json"])
        data = json.loads(r.output)
        assert r.exit_code == 0 and data["fits"], (name, data["peak_gib"], data["needed_gib"])
        assert data["gpu_hours"] > 0 and data["rows_per_forward"] < data["rows_per_micro_batch"]


def test_fsdp_plans_one_share_of_the_trained_transformer_per_rank():
    """Full fine-tuning of the toy on 4 ranks: fsdp keeps 1/4 of the transformer's weights, gradients
    and optimizer state (AdamW's moments and the EMA) per GPU plus two blocks gathered whole; the
    frozen parts and the activations are data parallel's; CPU offload keeps the shards off the GPU."""
    from grpo_guard.planning.plan import make_plan, transformer_blocks

    base = RunConfig.from_dict({**SMALL, "lora_rank": 0, "num_gpus": 4, "prompts_per_epoch": 4})
    ddp = make_plan(base, gpus.GPUS["h100"])
    fsdp = make_plan(base.with_overrides({"parallelism": "fsdp"}), gpus.GPUS["h100"])
    off = make_plan(base.with_overrides({"parallelism": "fsdp", "fsdp_cpu_offload": True}), gpus.GPUS["h100"])
    d, f, o = ddp.phase_bytes["update"], fsdp.phase_bytes["update"], off.phase_bytes["update"]
    # ddp holds T + others, fsdp T/4 + gathered + others, offloaded fsdp gathered + others.
    transformer = 4 * (f["weights"] - o["weights"])
    gathered = transformer - (d["weights"] - o["weights"])
    assert transformer > 0 and gathered == pytest.approx(2 * transformer / transformer_blocks(spec_for(base)), abs=8)
    assert f["gradients"] == pytest.approx(d["gradients"] / 4, abs=1)
    assert f["optimizer state"] == pytest.approx(d["optimizer state"] / 4, abs=1) and o["optimizer state"] == 0
    assert f["activations"] == d["activations"] and f["rollout buffers"] == d["rollout buffers"]
    assert fsdp.peak_gib < ddp.peak_gib and "fsdp" in fsdp.text() and "fsdp" not in ddp.text()
    assert any("1/4 per GPU" in n for n in fsdp.notes)

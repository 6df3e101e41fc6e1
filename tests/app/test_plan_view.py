"""The New-run form's memory plan: `grpo-guard plan` in a subprocess, rendered as the verdict."""

from __future__ import annotations

import pytest

from app.plan_view import plan_html, run_plan
from grpo_guard.config import RunConfig


@pytest.mark.slow
def test_the_form_plans_a_toy_run_in_a_subprocess(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GG_PLAN_CACHE", str(tmp_path_factory.getbasetemp() / "plan-cache"))  # shared by the session
    cfg = RunConfig.from_dict({"group_size": 4, "prompts_per_epoch": 2, "train_batch_size": 4, "num_steps": 4,
                               "update_rows_per_forward": 6, "sample_batch_size": 8})
    plan, why = run_plan(cfg, "4090")
    assert why == "" and plan is not None
    assert plan["fits"] is True and plan["gpu"] == "RTX 4090 24GB" and plan["rows_per_forward"] == 6
    html = plan_html(plan)
    assert 'data-fits="true"' in html and "Fits</b> the RTX 4090 24GB" in html and "GPU-hours" in html
    assert run_plan(cfg, "tpu")[0] is None


def test_plan_html_says_what_does_not_fit():
    plan = {"fits": False, "gpu": "A100 40GB", "gpu_memory_gib": 39.4, "peak_gib": 52.0, "peak_phase": "update",
            "dominant": "activations", "needed_gib": 55.6, "rows_per_forward": 18, "rows_per_micro_batch": 162,
            "phases": {"update": {"weights": 15.2, "activations": 30.0, "total": 52.0}},
            "epoch_seconds": 600.0, "gpu_hours": 80.0, "epochs": 480, "mfu": 0.3}
    html = plan_html(plan)
    assert 'data-fits="false"' in html and "Does not fit</b> the A100 40GB" in html and "52.0 GiB" in html
    assert "activations 30.0" in html and "80 GPU-hours" in html and "10.0 min per epoch" in html
    assert "No plan" in plan_html(None, "no architecture is known for model 'x'")

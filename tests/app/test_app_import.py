"""The app must start in seconds: importing it (and building every page) loads no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FORBIDDEN = ("torch", "diffusers", "transformers", "grpo_guard.models", "grpo_guard.training.trainer", "worker.tasks",
             "grpo_guard.toyworld.pipeline")

PROBE = f"""
import json, sys
import app.main
app.main.build_demo()
import app.cli
print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in {FORBIDDEN!r}))))
"""


def test_app_import_loads_no_torch(tmp_path):
    """DESIGN.md: app never imports torch, diffusers or grpo_guard.models (nor the trainer or the
    worker's task module); a regression here makes `grpo-guard serve` take a torch import."""
    env = {**os.environ, "GG_DATA_DIR": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the app imported heavy modules: {loaded}"

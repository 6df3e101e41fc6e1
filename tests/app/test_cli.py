"""``grpo-guard serve`` before anything slow: a busy port is one sentence and a non-zero exit at
once; the embedded workers split the CPU cores; library noise is filtered at process start."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

from app.cli import embedded_plan, port_problem
from grpo_guard.quiet import silence_library_noise


def test_serve_on_a_busy_port_says_so_in_one_sentence_and_exits_at_once(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "already in use" in (port_problem("127.0.0.1", port) or "")
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port),
                              "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
    out = (res.stdout + res.stderr).strip()
    assert res.returncode != 0
    assert out == f"Error: port {port} on 127.0.0.1 is already in use (another grpo-guard serve?); " \
                  "stop it or pick another port with --port.", out
    assert took < 20, f"the check must come before the slow imports ({took:.1f} s)"
    assert not (tmp_path / "data").exists(), "nothing is created for a serve that cannot start"


def test_a_free_port_passes_the_check():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert port_problem("127.0.0.1", port) is None


def test_embedded_workers_split_the_cores_between_the_arms_of_a_pair():
    assert embedded_plan(2, gpu=False) == [1, 1], "2 cores: both arms at once, one thread each"
    assert embedded_plan(16, gpu=False) == [8, 8]
    assert embedded_plan(5, gpu=False) == [3, 2]
    assert embedded_plan(1, gpu=False) == [1], "one core: one run at a time"
    assert embedded_plan(8, gpu=True) == [8], "a GPU: runs take turns on it"
    assert embedded_plan(4, workers=4, gpu=False) == [1, 1, 1, 1]


def test_where_the_governor_acts_each_embedded_worker_may_use_every_core():
    """A run alone then trains on all the cores; the governor of each run gives cores back when
    the other arm runs (benchmarks/trainer, condition pair). Where it cannot act, the split is fixed."""
    from app.cli import embedded_thread_env
    from grpo_guard.training import cpu

    governed = embedded_thread_env(1, 2, {})
    assert governed["OMP_NUM_THREADS"] == governed["MKL_NUM_THREADS"] == "2"
    assert cpu.governor_allowed(governed), "a ceiling the governor works under, not a count the user fixed"
    for off in ({"GG_THREAD_GOVERNOR": "0"}, {"GG_CPU_TUNING": "0"}, {"OMP_NUM_THREADS": "4"}):
        fixed = embedded_thread_env(1, 2, off)
        assert fixed == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, off
        assert not cpu.governor_allowed({**off, **fixed})


def test_library_noise_is_dropped_and_other_library_warnings_still_show(caplog, monkeypatch):
    # transformers' and diffusers' own logging stops propagation to the root logger (where caplog
    # listens) once either library has been imported in this process by an earlier test
    for lib in ("transformers", "diffusers"):
        monkeypatch.setattr(logging.getLogger(lib), "propagate", True)
    silence_library_noise()
    silence_library_noise()  # idempotent
    tf = logging.getLogger("transformers.utils.import_utils")
    dif = logging.getLogger("diffusers.models.modeling_utils")
    with caplog.at_level(logging.WARNING):
        tf.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
        dif.warning("There are modules in SD3Transformer2DModel that should be kept in float32: []. Casting ...")
        dif.warning("There are modules in X that should be kept in float32: ['norm']. Casting ...")
        tf.warning("something else")
        logging.getLogger("kombu.connection").warning("No hostname was supplied. Reverting to default 'localhost'")
    assert [r.getMessage()[:20] for r in caplog.records] == ["There are modules in", "something else"]

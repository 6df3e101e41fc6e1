"""The GPU benchmark script: its full-size architectures are the published ones (checked on the
meta device, no memory), it refuses clearly without CUDA, and ``--tiny`` runs its code path."""

import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_backbones",
                                                  os.path.join(ROOT, "benchmarks", "gpu", "bench_backbones.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_size_configs_have_the_published_parameter_counts(bench):
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    with torch.device("meta"):
        sd3 = SD3Transformer2DModel(**bench.SD35_MEDIUM)
        flux = FluxTransformer2DModel(**bench.FLUX1_DEV)
        vae = AutoencoderKL(**bench.VAE_16CH)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(sd3) / 1e9, 2) == 2.24, "SD3.5-Medium MMDiT-X transformer: 2.24B"
    assert round(count(flux) / 1e9, 1) == 11.9, "FLUX.1-dev transformer: 11.9B"
    assert round(count(vae) / 1e6, 1) == 83.8, "16-channel SD3/FLUX VAE: 83.8M"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_without_cuda(bench, capsys):
    assert bench.main(["--backbones", "flux"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_tiny_mode_runs_the_benchmark_code_path(bench, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--backbones", "flux", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert [r["algorithm"] for r in res] == ["dance_grpo", "dance_grpo_guard"]
    for r in res:
        assert r["sampling_images_per_s"] > 0 and r["update_s_per_denoising_step"] > 0
    assert "guard_update_overhead" in res[1]

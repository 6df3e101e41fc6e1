"""``resolve_model_dir``: a missing or incomplete model is one clear sentence (what was looked
for, where, how to fix it), raised before anything is loaded."""

import json
import os

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.models.base import ModelNotFoundError
from grpo_guard.models.loading import HF_MODEL_REQUIRED, PIPELINE_REQUIRED, resolve_model_dir


def _fake_pipeline(root, drop=()):
    """A save_pretrained-like layout with placeholder files (only their presence is checked)."""
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "image_encoder": [None, None]}
    files = ["model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
             "tokenizer/tokenizer.json", "text_encoder_2/config.json", "text_encoder_2/model.safetensors"]
    for f in files:
        if f in drop:
            continue
        path = os.path.join(root, f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(json.dumps(index) if f == "model_index.json" else "{}")
    return str(root)


def _one_sentence(msg: str) -> None:
    assert "\n" not in msg and msg.endswith("."), f"not one sentence: {msg!r}"


def test_complete_local_pipeline_resolves_to_its_absolute_path(tmp_path):
    d = _fake_pipeline(tmp_path / "m")
    assert resolve_model_dir(d) == os.path.abspath(d)


@pytest.mark.parametrize("drop, expect", [
    (("model_index.json",), "missing model_index.json"),
    (("transformer/diffusion_pytorch_model.safetensors",), "transformer/*.safetensors or transformer/*.bin"),
    (("vae/diffusion_pytorch_model.safetensors",), "vae/ weights"),
    (("scheduler/scheduler_config.json",), "missing scheduler/"),
    (("text_encoder_2/config.json",), "text_encoder_2/config.json"),
])
def test_incomplete_pipeline_names_the_missing_files(tmp_path, drop, expect):
    d = _fake_pipeline(tmp_path / "m", drop=drop)
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir(d, what="FLUX pipeline")
    msg = str(e.value)
    _one_sentence(msg)
    assert expect in msg and d in msg and "set `model`" in msg and "FLUX pipeline" in msg


def test_missing_directory_and_empty_setting(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"does not exist; set `model` to a directory"):
        resolve_model_dir(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(ModelNotFoundError, match="No model was given"):
        resolve_model_dir("")
    f = tmp_path / "file.bin"
    f.write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a directory"):
        resolve_model_dir(str(f))


def test_hub_id_offline_and_not_cached_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model_dir("black-forest-labs/FLUX.1-dev", what="FLUX pipeline")
    msg = str(e.value)
    _one_sentence(msg)
    assert "HF_HUB_OFFLINE is set" in msg and "hf download black-forest-labs/FLUX.1-dev" in msg


def test_hub_id_resolves_from_the_local_cache_offline(tmp_path, monkeypatch):
    """A snapshot already in the HF cache is found without network (HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "cache"
    snap = cache / "models--org--clip" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_text("{}")
    (cache / "models--org--clip" / "refs").mkdir()
    (cache / "models--org--clip" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_model_dir("org/clip", HF_MODEL_REQUIRED) == str(snap)


def test_flux_backbone_fails_before_loading_anything(tmp_path, monkeypatch):
    """The sentence comes from the file check; from_pretrained is never reached."""
    import diffusers

    from grpo_guard.models.flux import FluxBackbone

    def boom(*a, **k):
        raise AssertionError("from_pretrained must not run for an incomplete model")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", boom)
    d = _fake_pipeline(tmp_path / "m", drop=("transformer/diffusion_pytorch_model.safetensors",))
    cfg = RunConfig.from_dict(dict(backbone="flux", model=d, resolution=32))
    with pytest.raises(ModelNotFoundError, match="FLUX pipeline at .* is incomplete: missing transformer"):
        FluxBackbone.from_config(cfg, device="cpu")
    assert PIPELINE_REQUIRED[0] == "model_index.json"


def test_a_hub_pipeline_fetches_only_its_component_folders(tmp_path, monkeypatch):
    """One resolver for every backbone: a pipeline hub id downloads model_index.json and the
    component folders, never a root single-file checkpoint; a reward model gets every file."""
    import huggingface_hub

    from grpo_guard.models.sd3 import SD3Backbone, check_pipeline_dir, resolve_pipeline

    calls = []

    def fake_snapshot(repo_id, **kw):
        calls.append((repo_id, kw.get("allow_patterns")))
        return _fake_pipeline(tmp_path / repo_id.replace("/", "_"))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = resolve_pipeline("org/pipe", what="SD3 pipeline")
    assert calls[-1] == ("org/pipe", ["model_index.json", "*/*"]) and os.path.isdir(path)
    check_pipeline_dir(path)  # the names older code imports from sd3 still work
    resolve_model_dir("org/clip", ("*.json",))
    assert calls[-1] == ("org/clip", None)
    with pytest.raises(ModelNotFoundError, match="save_pretrained"):
        SD3Backbone.load(str(tmp_path / "absent"), device="cpu")

"""hf: prompt sets through ``datasets``: a local folder of data files, a save_to_disk folder, a
hub-cache snapshot read offline, and one sentence with the download command when missing."""

from __future__ import annotations

import json

import pytest

from grpo_guard.prompts import resolve_prompts

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_a_local_folder_of_csv_gives_distinct_non_empty_captions(tmp_path):
    d = tmp_path / "captions"
    d.mkdir()
    (d / "train.csv").write_text("caption,score\na cat on a mat,1\n,2\na dog in fog,3\na cat on a mat,4\n")
    assert resolve_prompts(f"hf:{d}") == ["a cat on a mat", "a dog in fog"]
    with pytest.raises(ValueError, match="has no split 'test'; it has train"):
        resolve_prompts(f"hf:{d}:test")
    with pytest.raises(ValueError, match="column 'score' .* holds no text"):
        resolve_prompts(f"hf:{d}#score")
    with pytest.raises(ValueError, match="no column 'title'; columns: caption, score"):
        resolve_prompts(f"hf:{d}#title")


def test_a_saved_dataset_dict_and_a_named_column(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": ["x", "y"]}),
                               "test": datasets.Dataset.from_dict({"body": ["z"]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert resolve_prompts(f"hf:{tmp_path / 'saved'}:test#body") == ["z"]
    with pytest.raises(ValueError, match="has no prompt, caption or text column; name one with #COLUMN"):
        resolve_prompts(f"hf:{tmp_path / 'saved'}")


def test_a_hub_id_is_read_from_the_local_cache_offline(tmp_path, monkeypatch):
    """A snapshot laid out as ``hf download`` leaves it in HF_HUB_CACHE."""
    repo = tmp_path / "hub" / "datasets--tiny--captions"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / sha / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in ("a red bus", "a blue kite")))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_prompts("hf:tiny/captions") == ["a red bus", "a blue kite"]


def test_a_missing_dataset_is_one_sentence_naming_the_download_command(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ValueError) as e:
        resolve_prompts("hf:nobody/no-such-prompts:test#caption")
    msg = str(e.value)
    assert "'nobody/no-such-prompts' is not in the local Hugging Face cache" in msg and "\n" not in msg
    assert "hf download --repo-type dataset nobody/no-such-prompts" in msg
    with pytest.raises(ValueError, match="no dataset directory at /no/such/dir"):
        resolve_prompts("hf:/no/such/dir")

"""Eval samples keep their prompt's metadata: the store recorder writes it, queries return it,
the JSONL/PNG folder recorder writes it, and migration 0003 adds the column without losing rows
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from grpo_guard.config import RunConfig
from grpo_guard.prompts import Prompt
from grpo_guard.store import db, queries
from grpo_guard.store.recorder import StoreRecorder
from grpo_guard.training.recording import FolderRecorder, Sample, read_jsonl
from tests.storehelpers import backend_env

META = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}


def test_a_sample_takes_its_metadata_from_the_prompt():
    assert Sample(0, Prompt("two dogs", META), 0, b"").prompt_meta == META
    assert Sample(0, "a cat", 0, b"").prompt_meta == {}
    assert Sample(0, "a cat", 0, b"", prompt_meta={"tag": "colors"}).prompt_meta == {"tag": "colors"}


def test_store_recorder_keeps_prompt_metadata(store):
    rid = queries.create_run(RunConfig.from_dict({"epochs": 2, "num_steps": 4}))
    with StoreRecorder(rid, background=False) as rec:
        rec.log_sample(Sample(0, Prompt("a photo of two dogs", META), 0, b"img", {"geneval": 1.0}, 1.0, 1.0))
        rec.log_sample(Sample(0, "a cat", 1, b"img", proxy=0.0))
    by_prompt = {s.prompt: s for s in queries.samples_for(rid)}
    assert by_prompt["a photo of two dogs"].prompt_meta == META and by_prompt["a cat"].prompt_meta == {}
    assert by_prompt["a photo of two dogs"].to_dict()["prompt_meta"] == META


def test_folder_recorder_writes_prompt_metadata(tmp_path):
    rec = FolderRecorder(str(tmp_path))
    rec.log_sample(Sample(3, Prompt("a photo of two dogs", META), 0, b"png"))
    rec.log_sample(Sample(3, "a cat", 0, b"png"))
    rec.flush()
    rows = {r["prompt"]: r for r in read_jsonl(str(tmp_path / "samples.jsonl"))}
    assert rows["a photo of two dogs"]["prompt_meta"] == META and "prompt_meta" not in rows["a cat"]


def _downgrade(url: str, revision: str) -> None:
    # through db.downgrade: on SQLite it turns foreign keys off, or a later revision's batch
    # recreate of `runs` (0008) would cascade-delete every row the runs own
    db.downgrade(url, revision)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0003_keeps_existing_samples_with_empty_metadata(backend, tmp_path):
    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, "0002")
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("INSERT INTO runs (id, name, config_json, config_fields_set, algorithm, backbone, status, "
                              "step, total, start_step, last_step, attempt, notes, created_at, updated_at) VALUES "
                              "(1, 'r', '{}', '[]', 'grpo_guard', 'toy', 'queued', 0, 1, 0, 0, 0, '', "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO samples (run_id, step, prompt, seed, image_location, scores) "
                              "VALUES (1, 0, 'a cat', 0, 'x.png', '{}')"))
        db.upgrade(url, "0003")
        assert db.current_revision(url) == "0003"
        with db.get_engine(url).connect() as conn:
            rows = conn.execute(text("SELECT prompt, prompt_meta FROM samples")).all()
        assert [(r[0], json.loads(r[1])) for r in rows] == [("a cat", {})]
        _downgrade(url, "0002")
        with db.get_engine(url).connect() as conn:
            cols = list(conn.execute(text("SELECT * FROM samples")).keys())
        assert "prompt_meta" not in cols and db.current_revision(url) == "0002"

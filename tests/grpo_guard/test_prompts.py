"""grpo_guard.prompts: Prompt keeps its metadata, every spec form resolves, bad specs are one
sentence, and the registry lists the built-in sets."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from grpo_guard.prompts import (
    Prompt,
    item_problem,
    known_sets,
    parse_hf_spec,
    prompt_to_item,
    registry,
    resolve_prompts,
    spec_has_geneval_meta,
    spec_problem,
    write_prompts,
)

DOG = {"prompt": "a photo of two dogs", "tag": "counting", "include": [{"class": "dog", "count": 2}],
       "exclude": [{"class": "dog", "count": 3}]}


def test_a_prompt_is_its_text_and_keeps_metadata_through_copy_and_pickle():
    p = Prompt("a photo of two dogs", {"tag": "counting"})
    assert p == "a photo of two dogs" and isinstance(p, str) and hash(p) == hash("a photo of two dogs")
    assert p.meta == {"tag": "counting"} and Prompt("x").meta == {} and Prompt("x", None).meta == {}
    for twin in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert isinstance(twin, Prompt) and twin == p and twin.meta == p.meta
    assert [q.meta for q in [p][:1]] == [{"tag": "counting"}], "slicing a list keeps the objects"


def test_the_built_in_sets_are_registered():
    assert {"toy:train", "toy:heldout", "toy:all", "ocr:train", "ocr:test", "geneval:train", "geneval:test"} <= set(registry())
    assert registry()["geneval:test"].geneval and not registry()["ocr:test"].geneval
    assert "hf:DATASET[:SPLIT][#COLUMN]" in known_sets() and "geneval:file:PATH" in known_sets()


def test_file_and_list_specs(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n", encoding="utf-8")
    assert resolve_prompts(f"file:{f}") == ["a cat", "a dog"]
    assert resolve_prompts(["x ", "y"]) == ["x", "y"]
    assert all(isinstance(p, Prompt) and p.meta == {} for p in resolve_prompts(["x"]))


def test_list_items_may_carry_geneval_metadata():
    out = resolve_prompts(["a cat", DOG])
    assert out == ["a cat", "a photo of two dogs"]
    assert out[0].meta == {} and out[1].meta == {k: v for k, v in DOG.items() if k != "prompt"}
    assert prompt_to_item(out[1]) == DOG and prompt_to_item(out[0]) == "a cat"


def test_geneval_file_reads_official_rows_and_write_reads_back(tmp_path):
    rows = [DOG, {"tag": "position", "include": [{"class": "cat", "count": 1},
                                                {"class": "dog", "count": 1, "position": ["left of", 0]}],
                  "prompt": "a photo of a dog left of a cat"}]
    f = tmp_path / "evaluation_metadata.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    got = resolve_prompts(f"geneval:file:{f}")
    assert [prompt_to_item(p) for p in got] == rows
    out = tmp_path / "again.jsonl"
    assert write_prompts(got, str(out), "jsonl") == 2
    again = resolve_prompts(f"geneval:file:{out}")
    assert again == got and [p.meta for p in again] == [p.meta for p in got]


@pytest.mark.parametrize("text, match", [
    ("not json\n", "line 1 .* is not a JSON object"),
    ('{"prompt": "a dog"}\n', "line 1 .*needs GenEval metadata"),
    ('{"prompt": "a dog", "tag": "counting", "include": [{"count": 2}]}\n', "include\\[0\\] needs a 'class'"),
    ("\n", "has no GenEval rows"),
])
def test_bad_geneval_files_name_the_line(tmp_path, text, match):
    f = tmp_path / "m.jsonl"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        resolve_prompts(f"geneval:file:{f}")


@pytest.mark.parametrize("spec, match", [
    ("toy:nope", "unknown prompt set 'toy:nope'; known: geneval:test"), ("ocr:val", "unknown prompt set"),
    ("file:/no/such/file", "cannot read prompt file"), ("geneval:file:", "names no file"),
    ("prompts", "unknown prompt set"), ([], "empty"), (["a", ""], "item 1 is an empty prompt"),
    (["a", {"text": "b"}], "item 1 has unknown key"), ([{"prompt": "b", "tag": "shapes"}], "item 0 has tag 'shapes'"),
    ([{"prompt": "b", "include": []}], "'include' must be a non-empty list"), (["a", 3], "item 1 must be a prompt text"),
    ([{"prompt": "b", "include": [{"class": "cat", "position": ["left of", 4]}]}], "refers to object 4"),
    ("hf:", "names no dataset"), (3, "must be a prompt set name or a list"),
])
def test_bad_specs_say_what_is_wrong_in_one_line(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        resolve_prompts(spec)
    assert "\n" not in str(e.value)


def test_item_problem_with_geneval_requires_tag_and_include():
    assert item_problem("a dog", geneval=True) == "is a plain prompt without GenEval metadata"
    assert item_problem({"prompt": "a dog", "tag": "single_object"}, geneval=True).startswith("needs GenEval")
    assert item_problem(DOG, geneval=True) is None


def test_geneval_metadata_is_judged_from_the_spec_alone(tmp_path):
    assert spec_has_geneval_meta("geneval:train") and spec_has_geneval_meta("geneval:file:/not/read/here.jsonl")
    assert spec_has_geneval_meta([DOG]) and not spec_has_geneval_meta([DOG, "a cat"])
    assert not any(spec_has_geneval_meta(s) for s in ("ocr:train", "toy:train", "file:x.txt", "hf:a/b", []))
    assert spec_problem("geneval:file:/not/read/here.jsonl") is None, "validation reads no file"


def test_hf_specs_parse_dataset_split_and_column():
    assert parse_hf_spec("hf:yuvalkirstain/pickapic_v2:test#caption") == ("yuvalkirstain/pickapic_v2", "test", "caption")
    assert parse_hf_spec("hf:org/name") == ("org/name", None, None)
    assert parse_hf_spec("hf:/data/prompts#text") == ("/data/prompts", None, "text")


def test_text_export_writes_one_prompt_a_line(tmp_path):
    out = tmp_path / "p.txt"
    write_prompts(resolve_prompts(["a cat", DOG]), str(out))
    assert out.read_text(encoding="utf-8") == "a cat\na photo of two dogs\n"
    assert resolve_prompts(f"file:{out}") == ["a cat", "a photo of two dogs"]

"""``grpo-guard prompts list | show | export``: the sets, a preview with metadata, and exports
(text, and jsonl that geneval:file: reads back identically); bad names exit 2 in one sentence."""

from __future__ import annotations

import json

from click.testing import CliRunner

from grpo_guard.cli import main
from grpo_guard.prompts import resolve_prompts


def _run(*args: str):
    return CliRunner().invoke(main, ["prompts", *args])


def test_list_names_every_set_and_spec_form():
    res = _run("list")
    assert res.exit_code == 0, res.output
    for name in ("toy:train", "toy:heldout", "ocr:train", "ocr:test", "geneval:train", "geneval:test",
                 "file:PATH", "geneval:file:PATH", "hf:DATASET[:SPLIT][#COLUMN]"):
        assert any(line.split()[0] == name for line in res.output.splitlines()), name


def test_show_prints_the_count_and_the_first_prompts_with_metadata():
    res = _run("show", "geneval:test", "--n", "3")
    assert res.exit_code == 0, res.output
    head, *rows = res.output.splitlines()
    assert head == "geneval:test: 494 prompts, 494 with metadata" and len(rows) == 3
    first = resolve_prompts("geneval:test")[0]
    text, meta = rows[0].split("\t")
    assert text == first and json.loads(meta) == first.meta
    res = _run("show", "ocr:test")
    assert res.exit_code == 0 and res.output.splitlines()[0] == "ocr:test: 1,000 prompts" and len(res.output.splitlines()) == 6


def test_export_jsonl_reads_back_identically_through_geneval_file(tmp_path):
    out = tmp_path / "geneval_test.jsonl"
    res = _run("export", "geneval:test", "--out", str(out))
    assert res.exit_code == 0 and "wrote 494 prompts" in res.output and "(jsonl)" in res.output, res.output
    again, orig = resolve_prompts(f"geneval:file:{out}"), resolve_prompts("geneval:test")
    assert again == orig and [p.meta for p in again] == [p.meta for p in orig]
    assert set(json.loads(out.read_text().splitlines()[0])) >= {"prompt", "tag", "include"}


def test_export_text_writes_one_prompt_a_line(tmp_path):
    out = tmp_path / "ocr_test.txt"
    assert _run("export", "ocr:test", "--out", str(out)).exit_code == 0
    assert out.read_text(encoding="utf-8").splitlines() == list(resolve_prompts("ocr:test"))
    out2 = tmp_path / "forced.txt"
    assert _run("export", "toy:heldout", "--out", str(out2), "--format", "jsonl").exit_code == 0
    assert json.loads(out2.read_text().splitlines()[0]) == {"prompt": resolve_prompts("toy:heldout")[0]}


def test_an_unknown_set_exits_2_with_one_sentence(tmp_path):
    res = _run("show", "ocr:nope")
    assert res.exit_code == 2 and "unknown prompt set 'ocr:nope'; known: geneval:test" in res.output
    res = _run("export", "geneval:file:/no/such.jsonl", "--out", str(tmp_path / "x.jsonl"))
    assert res.exit_code == 2 and "cannot read prompt file /no/such.jsonl" in res.output
    assert not (tmp_path / "x.jsonl").exists()


def test_the_prompts_commands_load_no_torch():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from grpo_guard.cli import main; "
            "r = CliRunner().invoke(main, ['prompts', 'show', 'geneval:train', '--n', '1']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr

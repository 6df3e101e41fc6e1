"""Issue 14, defect class 2: a config names files only inside the allowed roots (the config's
directory, GG_PROMPTS_DIR, the built-in sets), never /proc, /sys, /dev, a FIFO, socket, device,
directory or a symlink out of its root, and within a size and line limit; the same rules in the
CLI, the New-run form and the worker, and no secret of the submitter's environment is stored."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from grpo_guard.config import ConfigError, RunConfig, paths
from grpo_guard.config.validation import validate_run_config
from tests.hardening.helpers import assert_clean_rejection, cli_run, snapshot
from tests.storehelpers import backend_env

SECRET = "hf_s3cr3t_token_value_for_the_test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("GG_AUTH", f"ann:{SECRET}")
    monkeypatch.delenv("GG_PROMPTS_DIR", raising=False)
    with backend_env("sqlite", tmp_path / "store") as url:
        from grpo_guard.store import queries

        queries.create_run(RunConfig.from_dict({"epochs": 2}), name="already-there")
        yield url


@pytest.fixture
def tree(tmp_path):
    """A config directory with a good prompt file and every kind of bad one beside it."""
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "good.txt").write_text("a red circle on a blue background\n", encoding="utf-8")
    outside = tmp_path / "outside.txt"
    outside.write_text(f"{SECRET}\n", encoding="utf-8")
    (cfg_dir / "link_out.txt").symlink_to(outside)
    (cfg_dir / "link_in.txt").symlink_to(cfg_dir / "good.txt")
    os.mkfifo(cfg_dir / "fifo.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(cfg_dir / "sock.txt"))
    (cfg_dir / "dir.txt").mkdir()
    (cfg_dir / "big.txt").write_bytes(b"a\n" * (paths.MAX_FILE_BYTES // 2 + 1))
    (cfg_dir / "many_lines.txt").write_bytes(b"\n" * (paths.MAX_FILE_LINES + 1))
    (cfg_dir / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (cfg_dir / "devlink.txt").symlink_to("/dev/zero")
    yield cfg_dir
    sock.close()


REFUSED = {
    "proc_environ": ("file:/proc/self/environ", "outside the allowed roots"),
    "etc_passwd": ("file:/etc/passwd", "outside the allowed roots"),
    "dotdot": ("file:../../../etc/passwd", "'..'"),
    "dotdot_into_the_root_again": ("file:../cfg/good.txt", "'..'"),
    "home": ("file:~/.ssh/id_rsa", "'~'"),
    "hidden": ("file:.env", "hidden"),
    "dev_zero": ("file:/dev/zero", "outside the allowed roots"),
    "sys": ("file:/sys/kernel/mm/transparent_hugepage/enabled", "outside the allowed roots"),
    "symlink_out_of_the_root": ("file:link_out.txt", "resolves outside its root"),
    "symlink_to_dev": ("file:devlink.txt", "resolves outside its root"),
    "fifo": ("file:fifo.txt", "not a regular file"),
    "socket": ("file:sock.txt", "not a regular file"),
    "directory": ("file:dir.txt", "not a regular file"),
    "over_the_size_limit": ("file:big.txt", "larger than 4 MiB"),
    "over_the_line_limit": ("file:many_lines.txt", "lines, more than the 100000 allowed"),
    "not_utf8": ("file:latin1.txt", "not UTF-8"),
    "missing": ("file:nope.txt", "no file 'nope.txt' under the allowed roots"),
    "empty_path": ("file:", "names no file"),
    "nul_byte": ("file:good.txt\x00.png", "control characters"),
    "geneval_file_proc_environ": ("geneval:file:/proc/self/environ", "outside the allowed roots"),
    "geneval_file_symlink_out": ("geneval:file:link_out.txt", "resolves outside its root"),
    "geneval_file_fifo": ("geneval:file:fifo.txt", "not a regular file"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("field", ["prompts", "eval_prompts"])
def test_cli_refuses_the_file_naming_the_field_and_stores_nothing(store, tree, name, field):
    spec, words = REFUSED[name]
    cfg = tree / "run.yaml"
    cfg.write_text(f"{field}: {json.dumps(spec)}\nepochs: 2\n", encoding="utf-8")
    before = snapshot()
    for cmd in (["config", "validate"], ["submit"]):
        t0 = time.monotonic()
        code, out, cpu, exc = cli_run([*cmd, str(cfg)])
        assert time.monotonic() - t0 < 5 and cpu < 2.0
        assert_clean_rejection(code, out, exc, field)
        assert words in out, out
        assert SECRET not in out
    assert snapshot() == before


def test_the_error_names_the_allowed_roots(store, tree, tmp_path, monkeypatch):
    extra = tmp_path / "shared_prompts"
    extra.mkdir()
    monkeypatch.setenv("GG_PROMPTS_DIR", f"{extra}{os.pathsep}{tmp_path / 'second'}")
    with pytest.raises(ConfigError) as err:
        validate_run_config({"prompts": "file:/etc/passwd"}, config_dir=str(tree))
    (field, msg), = err.value.errors
    assert field == "prompts"
    for root in (str(tree), str(extra), str(tmp_path / "second"), paths.BUILTIN_ROOTS[0]):
        assert root in msg, msg


def test_files_under_each_root_are_read_and_stored_inline(store, tree, tmp_path, monkeypatch):
    from grpo_guard.store import queries

    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "sub" / "eval.txt").write_text("a green square on a white background\n", encoding="utf-8")
    monkeypatch.setenv("GG_PROMPTS_DIR", f"{tmp_path / 'empty'}{os.pathsep}{shared}")
    cfg = tree / "run.yaml"
    cfg.write_text(f"prompts: file:link_in.txt\neval_prompts: file:{shared / 'sub' / 'eval.txt'}\nepochs: 2\n",
                   encoding="utf-8")
    code, out, _, exc = cli_run(["submit", str(cfg)])
    assert code == 0 and exc is None, out
    row = queries.get_run(int(out.strip().splitlines()[-1]))
    assert row.config["prompts"] == ["a red circle on a blue background"]
    assert row.config["eval_prompts"] == ["a green square on a white background"]
    cfg.write_text("prompts: file:sub/eval.txt\nepochs: 2\n", encoding="utf-8")  # relative: looked up in GG_PROMPTS_DIR
    assert validate_run_config(str(cfg)).with_prompt_files_inlined(config_dir=str(tree)).prompts == [
        "a green square on a white background"]


def test_the_new_run_form_and_upload_apply_the_same_rules(store, tree):
    from app.run_form import form_values, read_uploaded_yaml, validate

    before = snapshot()
    for spec in ("file:/proc/self/environ", "file:/etc/passwd", "file:../x.txt", "file:~/.aws/credentials",
                 "file:/dev/zero", "file:a/.git/config"):
        _, _, errors = validate(form_values({"prompts": spec}))
        assert "prompts" in errors and SECRET not in errors["prompts"], errors
        up = tree / "up.yaml"
        up.write_text(f"prompts: {json.dumps(spec)}\n", encoding="utf-8")
        _, errors = read_uploaded_yaml(str(up))
        assert "prompts" in errors, errors
    assert snapshot() == before


def test_the_worker_confines_a_stored_config_to_its_own_roots(store, tree, tmp_path, monkeypatch):
    """A stored config has no directory: the worker reads only under its GG_PROMPTS_DIR and the
    built-in sets, and the run fails with one stored sentence otherwise."""
    from grpo_guard.store import lifecycle, queries
    from worker import attempt, tasks

    run_id = queries.create_run(RunConfig.from_dict({"epochs": 2}))

    def load(spec: str) -> RunConfig:
        monkeypatch.setattr(lifecycle, "stored_config", lambda rid: (json.dumps({"epochs": 2, "prompts": spec}),))
        return attempt.load_config(run_id)

    for spec in ("file:/proc/self/environ", "file:/etc/passwd", f"file:{tree / 'good.txt'}", "file:good.txt"):
        with pytest.raises(tasks.RunSetupError) as err:
            load(spec)
        assert "prompts" in str(err.value) and SECRET not in str(err.value)
    monkeypatch.setenv("GG_PROMPTS_DIR", str(tree))
    for spec in (f"file:{tree / 'good.txt'}", "file:good.txt"):
        assert load(spec).prompts == ["a red circle on a blue background"]
    with pytest.raises(tasks.RunSetupError, match="resolves outside its root"):
        load("file:link_out.txt")


def test_a_queued_config_is_refused_by_create_run_without_the_filesystem(store):
    """queries.create_run (every insert) judges the path text even where the file is invisible."""
    from grpo_guard.store import queries

    for spec in ("file:/proc/self/environ", "file:../secrets.txt", "file:.env"):
        with pytest.raises(ConfigError):
            queries.create_run(RunConfig.from_dict({"prompts": spec}))
    assert paths.spec_problem("prompts", "data/ocr/train.txt") is None

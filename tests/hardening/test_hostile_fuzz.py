"""Issue 14: a generated corpus of hostile configs (hypothesis strategies for YAML structure,
scalars and paths) through the Python API (validate_run_config), the CLI (`grpo-guard config
validate` and `grpo-guard submit`) and the New-run form's YAML upload. Every case ends in a
valid config or a clean rejection: exit 2 naming a field, no traceback, under 2 s of CPU, no
hang, and a rejected case stores nothing and writes nothing to the artifact root. Prints the
figures the README's Reliability section quotes."""

from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo_guard.config import ConfigError, RunConfig
from grpo_guard.config.validation import validate_run_config
from tests.hardening.helpers import alias_bomb, cli_run, cpu_seconds, deep_nesting, snapshot
from tests.storehelpers import backend_env

FIELDS = sorted(RunConfig.model_fields)
HANG_SECONDS = 10
PATH_FIELDS = {"prompts", "eval_prompts", "model"}

# YAML 1.1 spellings, number edge cases, tags and odd text: what a careless user or an attacker types
WORDS = ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "true", "false", "True", "~", "null", "", ".nan", ".inf",
         "-.inf", "nan", "inf", "0x1F", "0o17", "012", "1_000", "1:20:30", "2001-12-14", "1e400", "-0", "+5", "0.",
         "bf16", "fp16", "toy", "sd3", "grpo_guard", "!!python/object/apply:os.system ['id']", "!!binary aGk=",
         "!!set {a, b}", "'quoted'", '"\\u0000"', "\"\\x85\"", "<<", "&x 1", "*undefined", "|\n  block", ">-\n  folded"]
PATHS = ["/proc/self/environ", "/proc/1/mem", "/etc/passwd", "/etc/shadow", "/dev/zero", "/dev/stdin", "/sys/power/state",
         "../../../../etc/passwd", "..", ".", "~/.ssh/id_rsa", ".env", "a/../../b", "./good.txt", "good.txt", "link_out.txt",
         "fifo.txt", "sock.txt", "missing.txt", "", " ", "%2e%2e/etc/passwd", "good.txt\x00.png", "\\..\\..\\windows"]


def _scalar() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(WORDS),
        st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=20, max_value=6000).map(lambda n: "9" * n),  # long numbers
        st.integers(min_value=1, max_value=20_000).map(lambda n: "x" * n),  # long strings
        st.text(max_size=30).map(json.dumps),  # any unicode, quoted
        st.sampled_from(PATHS).map(lambda p: json.dumps("file:" + p)),
        st.sampled_from(PATHS),
    )


def _node() -> st.SearchStrategy[str]:
    return st.recursive(
        _scalar(),
        lambda kids: st.one_of(
            st.lists(kids, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.lists(st.tuples(st.sampled_from(FIELDS + WORDS[:10]), kids), max_size=3).map(
                lambda kv: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in kv) + "}")),
        max_leaves=12)


def _mapping_doc() -> st.SearchStrategy[str]:
    key = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["prompt", "epoch", "rewards.x", "1", "null", "<<"]))
    return st.lists(st.tuples(key, _node()), max_size=6).map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv))


VALID = ["epochs: 3", "mixed_precision: no", "mixed_precision: bf16", "group_size: 4", "ema: false", "seed: 012",
         "learning_rate: 1e-4", "algorithm: flow_grpo", "prompts: file:good.txt", "eval_prompts: [a red circle on a blue background]",
         "eval_seeds: [0, 1, 2]", "rewards: {toy_fg_share: 1.0}", "ratio_norm: true", "lora_rank: 0", "num_steps: 12"]


def _mostly_valid_doc() -> st.SearchStrategy[str]:
    """Valid lines with, sometimes, one hostile line among them."""
    hostile = st.tuples(st.sampled_from(FIELDS), _scalar()).map(lambda kv: f"{kv[0]}: {kv[1]}")
    return st.tuples(st.lists(st.sampled_from(VALID), min_size=1, max_size=6, unique_by=lambda x: x.split(":")[0]),
                     st.one_of(st.none(), hostile)).map(
        lambda t: "".join(f"{ln}\n" for ln in t[0] if t[1] is None or ln.split(":")[0] != t[1].split(":")[0])
        + (f"{t[1]}\n" if t[1] else ""))


def _documents() -> st.SearchStrategy[str]:
    return st.one_of(
        _mostly_valid_doc(),
        _mostly_valid_doc(),
        _mapping_doc(),
        _mapping_doc(),
        st.tuples(st.sampled_from(FIELDS), st.integers(2, 12), st.integers(2, 12)).map(
            lambda t: alias_bomb(t[0], width=t[1], levels=t[2])),
        st.tuples(st.sampled_from(FIELDS), st.integers(10, 30_000)).map(lambda t: deep_nesting(*t)),
        st.tuples(st.sampled_from(["prompts", "eval_prompts"]), st.sampled_from(PATHS)).map(
            lambda t: f"{t[0]}: {json.dumps('file:' + t[1])}\nepochs: 2\n"),
        _node(),  # not a mapping, mostly
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    )


class Tally:
    def __init__(self) -> None:
        self.tried = self.accepted = self.rejected = self.tracebacks = self.hangs = 0
        self.max_cpu = 0.0
        self.stored_by_rejected = 0


def _alarm(_signum, _frame):
    raise TimeoutError(f"a case ran past {HANG_SECONDS} s")


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.delenv("GG_PROMPTS_DIR", raising=False)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "good.txt").write_text("a red circle on a blue background\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("s3cret\n", encoding="utf-8")
    (cfg_dir / "link_out.txt").symlink_to(tmp_path / "secret.txt")
    os.mkfifo(cfg_dir / "fifo.txt")
    with backend_env("sqlite", tmp_path / "store") as url:
        yield cfg_dir, url


def test_generated_hostile_configs_end_cleanly_everywhere(world):
    from app.run_form import read_uploaded_yaml
    from grpo_guard.store import db, queries

    cfg_dir, _ = world
    path = str(cfg_dir / "case.yaml")
    tally = Tally()
    old = signal.signal(signal.SIGALRM, _alarm)

    examples = int(os.environ.get("GG_FUZZ_EXAMPLES", "300"))

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,  # the README quotes its figures
              suppress_health_check=list(HealthCheck))
    @given(_documents())
    def one(text: str) -> None:
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        tally.tried += 1
        runs_before = len(queries.list_runs(limit=100_000))
        artifacts_before = sorted(os.listdir(db.artifacts_root())) if os.path.isdir(db.artifacts_root()) else []
        signal.alarm(HANG_SECONDS)
        try:
            with cpu_seconds() as clock:
                try:
                    validate_run_config(path)
                    ok, fields = True, set()
                except ConfigError as e:
                    ok, fields = False, {k.split(".", 1)[0] for k, _ in e.errors}
            cpu = clock.seconds
            outcomes = []
            for args in (["config", "validate", path], ["submit", path]):
                code, out, c, exc = cli_run(args)
                cpu = max(cpu, c)
                assert exc is None and "Traceback" not in out, f"{args[0]}: {exc!r}\n{out}\n--- case:\n{text[:500]}"
                assert code in (0, 2), f"{args[0]} exit {code}: {out}"
                if code == 2:
                    assert out.startswith("error: invalid run config:\n  "), out
                outcomes.append(code == 0)
            with cpu_seconds() as clock:
                values, errors = read_uploaded_yaml(path)
            cpu = max(cpu, clock.seconds)
        except TimeoutError:
            tally.hangs += 1
            raise
        except AssertionError:
            tally.tracebacks += 1
            raise
        finally:
            signal.alarm(0)
        tally.max_cpu = max(tally.max_cpu, cpu)
        assert cpu < 2.0, f"{cpu:.2f} s of CPU for:\n{text[:300]}"
        assert outcomes == [ok, ok], f"API {ok}, config validate / submit {outcomes}:\n{text[:300]}"
        if not ok and not fields <= PATH_FIELDS:  # the form judges paths by their text (it has no config dir)
            assert values is None or errors, f"the upload accepted what validation refused:\n{text[:300]}"
        runs_after = len(queries.list_runs(limit=100_000))
        if ok:
            tally.accepted += 1
        else:
            tally.rejected += 1
            tally.stored_by_rejected += runs_after - runs_before
            now = sorted(os.listdir(db.artifacts_root())) if os.path.isdir(db.artifacts_root()) else []
            tally.stored_by_rejected += len(set(now) - set(artifacts_before))
        assert tally.stored_by_rejected == 0

    try:
        before = snapshot()
        one()
    finally:
        signal.signal(signal.SIGALRM, old)
    print(f"\nhostile fuzz: {tally.tried} cases tried, {tally.rejected} rejected cleanly, {tally.accepted} valid, "
          f"tracebacks {tally.tracebacks}, hangs {tally.hangs}, stored by rejected cases {tally.stored_by_rejected}, "
          f"max CPU per case and route {tally.max_cpu:.2f} s")
    assert tally.tried >= examples and tally.rejected >= tally.tried // 2
    assert tally.tracebacks == tally.hangs == tally.stored_by_rejected == 0
    after = snapshot()
    added = {k: len(after[k]) - len(before[k]) for k in after}
    assert added.get("__artifacts__", 0) == 0

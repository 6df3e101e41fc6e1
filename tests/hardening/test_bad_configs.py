"""The bad-config corpus (tests/hardening/bad_configs/, expected fields in index.yaml) through
every way in: the CLI (`grpo-guard submit`), the Python API (RunConfig.from_file + the submit
checks + queries.create_run) and the New-run form over HTTP (gradio_client, api_name
/submit_run). Each case must give an error naming its field, never a traceback, and the store
(every row of every table, and the artifact files) must be unchanged after the whole corpus,
on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import os

import pytest
from click.testing import CliRunner

from grpo_guard.config import ConfigError, RunConfig, safe_yaml
from tests.hardening.helpers import BACKENDS, corpus, names_field, serve_app, snapshot
from tests.storehelpers import backend_env

CASES = corpus()
IDS = [os.path.basename(p)[:-5] for p, _ in CASES]
# The form does not check that a local model path exists: the app container of the compose
# deployment does not mount the workers' /models (docker-compose.yml), so such a path can only
# be checked where the workers run (the CLI does, `grpo-guard submit`; the worker refuses it
# with one sentence at load time).
FORM_SKIPS_PATH_CHECK = {"model_path_does_not_exist"}


def test_the_corpus_is_big_enough_and_covers_the_issue():
    assert len(CASES) >= 30
    fields = {f for _, f in CASES}
    for f in ("", "group_size", "model", "resolution", "rewards", "gold", "learning_rate", "epochs", "backbone"):
        assert f in fields, f"no bad config for {f or 'the config as a whole'}"


@pytest.fixture(scope="module", params=BACKENDS)
def store(request, tmp_path_factory):
    with backend_env(request.param, tmp_path_factory.mktemp(f"bad-{request.param}")) as url:
        # a run already in the store, so "unchanged" means something
        from grpo_guard.store import queries

        queries.create_run(RunConfig.from_dict({"epochs": 2}), name="already-there", tags=["keep"])
        yield url


@pytest.fixture(scope="module")
def before(store):
    return snapshot()


def test_cli_submit_names_the_field_and_writes_nothing(store, before):
    from grpo_guard.cli import main

    runner = CliRunner()
    for (path, field), name in zip(CASES, IDS, strict=True):
        res = runner.invoke(main, ["submit", path])
        assert res.exit_code == 2, f"{name}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
        assert "Traceback" not in res.output, name
        want = f"  {field or '(config)'}"
        lines = [ln for ln in res.output.splitlines() if ln.startswith("  ")]
        assert any(ln.startswith(want + ":") or ln.startswith(want + ".") for ln in lines), f"{name}: {res.output}"
    assert snapshot() == before, "a rejected config changed the store"


def test_python_api_raises_config_error_naming_the_field(store, before):
    from grpo_guard.store import queries

    for (path, field), name in zip(CASES, IDS, strict=True):
        with pytest.raises(ConfigError) as err:
            cfg = RunConfig.from_file(path)
            cfg.check_submittable(check_paths=True)
            queries.create_run(cfg)
        assert names_field(err.value.errors, field), f"{name}: {err.value.errors}"
    # create_run alone (no explicit check) still refuses unregistered names
    for text, field in (("rewards: {toy_fg_shar: 1.0}", "rewards"), ("gold: [nope]", "gold")):
        with pytest.raises(ConfigError) as err:
            queries.create_run(RunConfig.from_yaml(text))
        assert names_field(err.value.errors, field)
    assert snapshot() == before


def _form_expressible(data) -> bool:
    """Whether the form's widgets can carry these values at all (a dropdown only offers its
    choices, a number box only finite numbers, unknown keys have no widget)."""
    from app.run_form import FIELDS

    if not isinstance(data, dict):
        return False
    by_name = {f.name: f for f in FIELDS}
    for k, v in data.items():
        f = by_name.get(k)
        if f is None:
            return False
        if f.kind == "choice" and str(v) not in f.choices:
            return False
        if f.kind in ("tristate", "bool") and not isinstance(v, bool):
            return False
        if f.kind in ("int", "float") and not f.auto:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return False
            if f.kind == "int" and not float(v).is_integer():
                return False  # a precision-0 number box rounds what is typed
    return True


@pytest.mark.slow
def test_new_run_form_names_the_field_and_writes_nothing(store, before):
    from gradio_client import Client

    from app.run_form import FIELDS, form_values

    sent = 0
    with serve_app() as url:
        client = Client(url, verbose=False)
        for (path, field), name in zip(CASES, IDS, strict=True):
            try:  # read as the app reads an upload: files over a limit never reach the form
                data = safe_yaml.load_mapping(safe_yaml.read_config_file(path))
            except ConfigError:
                continue
            if name in FORM_SKIPS_PATH_CHECK or not _form_expressible(data):
                continue
            out = client.predict("", "", "", False, *form_values(data), api_name="/submit_run")
            # outputs: the banner, the page to go to after an enqueue ("" here), then one error per field
            banner, goto, field_errors = out[0], out[1], out[2:2 + len(FIELDS)]
            assert not goto, f"{name}: a rejected config must not leave the page"
            assert "Nothing was enqueued" in banner, f"{name}: {banner}"
            shown = {f.name for f, upd in zip(FIELDS, field_errors, strict=True)
                     if isinstance(upd, dict) and upd.get("visible") and upd.get("value")}
            assert field in shown, f"{name}: errors shown at {shown}, banner {banner}"
            sent += 1
    assert sent >= 30, f"only {sent} corpus cases went through the form"
    assert snapshot() == before

"""Access: with GG_AUTH set nothing that reads or changes data answers without a session
(/health stays open); artifact serving never leaves the artifact root (``..``, absolute paths,
symlinks, URL-encoded dots), in queries.artifact_path and over HTTP; config values cannot make a
worker import code; secrets (HF_TOKEN, the database password) reach no stored row, log line or
page."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from grpo_guard.config import ConfigError, RunConfig
from tests.hardening.helpers import BACKENDS, snapshot
from tests.storehelpers import PG_BASE, backend_env

CANARY = "canary-run-7c1f"
DENIED = (401, 403, 404, 405, 302, 303, 307)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"access-{request.param}")
    with backend_env(request.param, tmp), pytest.MonkeyPatch.context() as mp:
        from grpo_guard.store import db, queries

        mp.setenv("GG_AUTH", "ann:pw-9d2e")
        mp.delenv("GG_AUTH_FILE", raising=False)
        rid = queries.create_run(RunConfig.from_dict({"epochs": 2}), name=CANARY)
        art = db.artifacts_root()
        os.makedirs(os.path.join(art, "runs", str(rid), "samples"), exist_ok=True)
        img = os.path.join(art, "runs", str(rid), "samples", "img.png")
        ckpt = os.path.join(art, "runs", str(rid), "ckpt_000002.pt")
        for p, data in ((img, b"\x89PNG\r\n\x1a\n" + CANARY.encode()), (ckpt, b"weights " + CANARY.encode())):
            with open(p, "wb") as fh:
                fh.write(data)
        outside = tmp / "outside"
        outside.mkdir()
        (outside / "secret.txt").write_text(CANARY)
        link = os.path.join(art, "escape")
        os.symlink(str(outside), link)
        from app.main import create_app

        app = create_app(host="0.0.0.0", port=7999)
        yield {"app": app, "rid": rid, "img": img, "ckpt": ckpt, "art": art, "outside": str(outside)}


def _data_routes(w) -> list[tuple[str, str, dict]]:
    rid, img, ckpt = w["rid"], w["img"], w["ckpt"]
    call = {"data": ["x", "", "", False]}
    return [
        ("GET", "/config", {}), ("GET", "/config/", {}), ("GET", "/gradio_api/info", {}),
        ("GET", "/info", {}), ("GET", "/gradio_api/deep_link", {}), ("GET", "/monitoring", {}),
        ("GET", f"/gradio_api/file={img}", {}), ("GET", f"/gradio_api/file={ckpt}", {}),
        ("HEAD", f"/gradio_api/file={ckpt}", {}), ("GET", f"/file={img}", {}),
        ("GET", f"/gradio_api/file={w['outside']}/secret.txt", {}),
        ("POST", "/gradio_api/queue/join", {"json": {"data": [], "fn_index": 0, "session_hash": "abc", "event_data": None}}),
        ("GET", "/gradio_api/queue/data?session_hash=abc", {}),
        ("POST", "/gradio_api/call/submit_run", {"json": call}),
        ("POST", "/gradio_api/run/submit_run", {"json": call}),
        ("POST", "/gradio_api/api/submit_run", {"json": call}),
        ("POST", "/run/predict", {"json": call}),
        ("POST", "/gradio_api/upload", {"files": {"files": ("x.yaml", b"epochs: 1\n")}}),
        ("GET", "/gradio_api/upload_progress?upload_id=x", {}),
        ("GET", f"/gradio_api/file=runs/{rid}/samples/img.png", {}),
    ]


def test_without_a_session_no_route_reads_or_changes_data(world):
    before = snapshot()
    with TestClient(world["app"], follow_redirects=False) as c:
        assert c.get("/health").status_code == 200 and c.get("/health").json()["status"] == "ok"
        checked = 0
        for method, path, kw in _data_routes(world):
            r = c.request(method, path, **kw)
            assert r.status_code in DENIED, f"{method} {path} answered {r.status_code} without a login: {r.text[:200]}"
            assert CANARY not in r.text, f"{method} {path} leaked data without a login"
            checked += 1
        # pages answer with the login form only: no run data in them
        for path in ("/", f"/run?run={world['rid']}", "/new", "/compare"):
            r = c.get(path)
            assert CANARY not in r.text, f"{path} shows run data without a login"
        # the login works, and then the same data is there (so the refusals above mean something)
        assert c.post("/login", data={"username": "ann", "password": "pw-9d2e"}).status_code == 200
        assert c.get("/config").status_code == 200
        assert c.get(f"/gradio_api/file={world['img']}").status_code == 200
        assert c.get(f"/gradio_api/file={world['ckpt']}").status_code == 200
    assert checked >= 20
    assert snapshot() == before, "an unauthenticated request changed the store"


def test_logged_in_file_route_cannot_escape_the_artifact_root(world):
    art = world["art"]
    escapes = [
        "/etc/passwd", "/proc/self/environ", f"{art}/../../../../etc/passwd", f"{art}/%2e%2e/%2e%2e/etc/passwd",
        f"{art}/%2e%2e%2f%2e%2e%2fetc%2fpasswd", f"{art}/..%2f..%2fetc/passwd", f"{art}/escape/secret.txt",
        f"{art}/runs/../../outside/secret.txt", f"{world['outside']}/secret.txt", "%2fetc%2fpasswd",
    ]
    with TestClient(world["app"], follow_redirects=False) as c:
        assert c.post("/login", data={"username": "ann", "password": "pw-9d2e"}).status_code == 200
        for p in escapes:
            r = c.get(f"/gradio_api/file={p}")
            assert r.status_code in (400, 403, 404), f"{p}: {r.status_code}"
            assert CANARY not in r.text and "root:" not in r.text, f"{p} escaped the artifact root"


def test_artifact_path_cannot_escape_the_root(world):
    from grpo_guard.store import queries

    art = os.path.realpath(world["art"])
    for bad in ("../x", "runs/../../x", "/etc/passwd", "escape/secret.txt", "runs/../escape/secret.txt",
                "", "a/\x00b", "~/x/../../..", "runs/1/../../../etc/passwd"):
        with pytest.raises(ValueError):
            queries.artifact_path(bad)
    # URL-encoded dots are a file name here, not a parent directory: it stays inside the root
    p = queries.artifact_path("%2e%2e%2fetc%2fpasswd")
    assert os.path.dirname(p) == art
    assert queries.artifact_path(f"runs/{world['rid']}/samples/img.png") == os.path.realpath(world["img"])


@pytest.mark.parametrize("name", ["os:system", "grpo_guard.x:y", "subprocess.run", "../evil", "a b", "builtins:eval",
                                  "__import__('os')"])
def test_reward_and_gold_names_cannot_name_code(name):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"rewards": {name: 1.0}})
    assert any(k.startswith("rewards") for k, _ in err.value.errors)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"gold": [name]})
    assert any(k == "gold" for k, _ in err.value.errors)
    from grpo_guard.rewards import build_reward

    with pytest.raises(KeyError):  # the builder only ever looks names up in the registry
        build_reward(name)


def test_the_worker_picks_backbones_and_rewards_by_name_only():
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"backbone": "grpo_guard.models.sd3:SD3Backbone"})
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"dynamics": "os:system"})


# ---- secrets -------------------------------------------------------------------------------
HF = "sekrit-xyz-hf"
PGPW = "pgsekrit-123"


@pytest.mark.parametrize("backend", BACKENDS)
def test_secrets_reach_no_row_log_or_page(backend, tmp_path, monkeypatch):
    """HF_TOKEN and the database password, set in the environment, appear in no stored row (a
    text dump of every table), no log line, no page the UI renders, and no /health answer."""
    import worker.tasks
    from app.pages import run_detail as R
    from app.pages import runs as RU
    from grpo_guard.cli import main
    from grpo_guard.store import db, queries
    from tests.worker import fake_trainer

    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", HF)
    monkeypatch.setattr(worker.tasks, "TRAIN_FN", fake_trainer.train)
    monkeypatch.setenv("GG_FAKE_STEP_SECONDS", "0.01")
    monkeypatch.setenv("GG_BROKER_URL", "memory://")
    with backend_env(backend, tmp_path) as url:
        if backend == "postgresql":  # trust auth: any password connects, and must never be shown
            url = url.replace("postgres@", f"postgres:{PGPW}@")
            monkeypatch.setenv("GG_DATABASE_URL", url)
            db.dispose_engines()
        cfg = tmp_path / "run.yaml"
        cfg.write_text("epochs: 3\nnum_steps: 3\neval_every: 1\ncheckpoint_every: 1\neval_seeds: [0]\n")
        from click.testing import CliRunner

        res = CliRunner().invoke(main, ["submit", str(cfg), "--name", "secret-check"])
        assert res.exit_code == 0, res.output
        rid = int(res.output.strip().splitlines()[-1])
        assert worker.tasks.execute_run(rid) == "succeeded"
        bad = queries.create_run(RunConfig.from_dict({"epochs": 3, "seed": fake_trainer.FAILING_SEED}))
        assert worker.tasks.execute_run(bad) == "failed"

        dump = json.dumps(snapshot(), default=repr)
        texts = {"store": dump, "cli": res.output}
        rows, _, _ = RU.render([], None, None, "created", True)
        texts["runs page"] = json.dumps(rows, default=str)
        for r in (rid, bad):
            out = R.render_run(r, R.poll_cursor(r), False, None)
            texts[f"run page {r}"] = repr(out)
            texts[f"logs {r}"] = str(R.tail_logs(r, "all"))
            texts[f"run row {r}"] = json.dumps(queries.get_run(r).to_dict(), default=str)
        texts["redacted url"] = db.redact(url)
        for where, text in texts.items():
            assert HF not in text, f"HF_TOKEN reached the {where}"
            assert PGPW not in text, f"the database password reached the {where}"

    if backend == "postgresql":  # a failing database: /health names the problem, not the password
        monkeypatch.setenv("GG_DATABASE_URL", PG_BASE.replace("postgres@", f"postgres:{PGPW}@").replace(":5432", ":1"))
        db.dispose_engines()
        from app.main import create_app

        monkeypatch.setenv("GG_AUTH", "ann:pw")
        app = create_app(host="127.0.0.1", port=7998, check_schema=False)
        with TestClient(app) as c:
            r = c.get("/health")
        assert r.status_code == 503 and PGPW not in r.text, r.text
        db.dispose_engines()


# ---- prompt files: a config must not make a worker read its secrets ------------------------------
@pytest.mark.parametrize("spec", ["file:/proc/self/environ", "file:/etc/passwd", "file:~/.ssh/id_rsa", "file:.env",
                                  "file:data/../../.env", "file:../secrets.txt"])
def test_queued_runs_cannot_name_a_prompt_file_outside_the_workers_directory(world, spec):
    """A worker would read the file with its own permissions and store each line as a prompt
    that every UI user sees (e.g. /proc/self/environ holds HF_TOKEN and the database URL)."""
    from app.run_form import form_values, validate
    from grpo_guard.store import queries

    for field in ("prompts", "eval_prompts"):
        cfg = RunConfig.from_dict({field: spec})  # fine for `grpo-guard train` on one's own machine
        with pytest.raises(ConfigError) as err:
            queries.create_run(cfg)
        assert [k for k, _ in err.value.errors] == [field]
        _, _, errors = validate(form_values({field: spec}))
        assert field in errors, errors
    RunConfig.from_dict({"prompts": "file:data/ocr/train.txt"}).check_submittable()  # the presets' form


def test_cli_submit_stores_the_prompts_of_a_local_file_not_its_path(world, tmp_path):
    from click.testing import CliRunner

    from grpo_guard.cli import main
    from grpo_guard.store import queries

    prompts = tmp_path / "mine.txt"
    prompts.write_text("a red circle on a blue background\n# comment\na green square on a white background\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"eval_prompts: file:{prompts}\nepochs: 2\n")
    res = CliRunner().invoke(main, ["submit", str(cfg)])
    assert res.exit_code == 0, res.output
    row = queries.get_run(int(res.output.strip().splitlines()[-1]))
    assert row.config["eval_prompts"] == ["a red circle on a blue background", "a green square on a white background"]
    queries.delete_run(row.id)

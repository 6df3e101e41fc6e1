"""app/main.py: auth settings, the public-bind refusal, /health, login and the file route."""

from __future__ import annotations

import pytest

from app.main import AuthConfigError, auth_credentials, check_bind, is_loopback, make_auth


def test_auth_from_env_and_file(tmp_path):
    assert auth_credentials({}) == []
    assert auth_credentials({"GG_AUTH": "ann:s3:cr:et"}) == [("ann", "s3:cr:et")], "the password may contain ':'"
    f = tmp_path / "users"
    f.write_text("# team\nbob:pw1\n\ncy:pw2\n")
    assert auth_credentials({"GG_AUTH": "ann:x", "GG_AUTH_FILE": str(f)}) == [("ann", "x"), ("bob", "pw1"), ("cy", "pw2")]


@pytest.mark.parametrize("env, needle", [
    ({"GG_AUTH": "nopassword"}, "user:password"),
    ({"GG_AUTH": ":pw"}, "non-empty user"),
    ({"GG_AUTH_FILE": "/nonexistent/users"}, "cannot read GG_AUTH_FILE"),
])
def test_bad_auth_settings_are_refused_with_the_variable_named(env, needle):
    with pytest.raises(AuthConfigError, match=needle):
        auth_credentials(env)


def test_empty_auth_file_is_refused(tmp_path):
    f = tmp_path / "users"
    f.write_text("# nobody yet\n")
    with pytest.raises(AuthConfigError, match="no 'user:password' line"):
        auth_credentials({"GG_AUTH_FILE": str(f)})


def test_public_bind_without_auth_refuses_to_start():
    """Anyone reaching a public address could start, stop and delete runs."""
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, [])
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(AuthConfigError, match="GG_AUTH"):
            check_bind(host, [])
        check_bind(host, [("u", "p")])  # with auth it is allowed


def test_auth_check_is_exact():
    check = make_auth([("ann", "pw"), ("bob", "x")])
    assert check("ann", "pw") and check("bob", "x")
    assert not check("ann", "x") and not check("ann", "pw ") and not check("", "") and not check("eve", "pw")
    assert make_auth([]) is None


def test_serve_refuses_public_host_without_auth(monkeypatch):
    from click.testing import CliRunner

    from grpo_guard.cli import main

    monkeypatch.delenv("GG_AUTH", raising=False)
    monkeypatch.delenv("GG_AUTH_FILE", raising=False)
    res = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--no-worker"])
    assert res.exit_code != 0
    assert "refusing to serve on 0.0.0.0 without auth" in res.output


def test_health_login_and_artifact_files(store, monkeypatch, tmp_path):
    """/health answers without auth; the UI needs a login (STACK.md G10); only files under the
    artifact root are served (G8), never e.g. /etc/passwd."""
    import os

    from fastapi.testclient import TestClient

    from app.main import create_app
    from grpo_guard.store import db

    monkeypatch.setenv("GG_AUTH", "ann:pw")
    app = create_app(host="0.0.0.0", port=7999)
    art = db.artifacts_root()
    os.makedirs(os.path.join(art, "runs", "1"), exist_ok=True)
    img = os.path.join(art, "runs", "1", "x.png")
    with open(img, "wb") as fh:
        fh.write(b"\x89PNG fake")
    with TestClient(app) as c:
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/config").status_code == 401, "the UI must need a login"
        r = c.post("/login", data={"username": "ann", "password": "wrong"})
        assert r.status_code == 400
        r = c.post("/login", data={"username": "ann", "password": "pw"})
        assert r.status_code == 200, r.text
        assert c.get("/config").status_code == 200
        assert c.get(f"/gradio_api/file={img}").status_code == 200, "artifact images must be served"
        assert c.get("/gradio_api/file=/etc/passwd").status_code in (403, 404), "files outside the root must not be"

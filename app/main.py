"""The app: mounts the pages on one Gradio Blocks, puts it on FastAPI with ``/health`` and the
blind judging page ``/judge`` (``app.judge_routes``, behind the same login), sets up auth, and
serves the artifact root for images and checkpoints.

Imports ``grpo_guard.config``, ``grpo_guard.store`` and ``worker.celery_app`` only (never
torch, diffusers, ``grpo_guard.models``, the trainer or the worker's tasks), so it starts in
seconds (``tests/app/test_app_import.py`` checks that no torch is loaded).

Environment:
  GG_AUTH        ``user:password``: enables the login page (the password may contain ':').
  GG_AUTH_FILE   a file with one ``user:password`` per line (``#`` comments): several users.
  GG_DATA_DIR, GG_DATABASE_URL, GG_ARTIFACTS: where the store lives (grpo_guard.store.db).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import warnings
from collections.abc import Callable, Mapping

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from grpo_guard import __version__  # noqa: E402

APP_DIR = os.path.dirname(os.path.abspath(__file__))
CSS_PATH = os.path.join(APP_DIR, "style.css")
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


# Gradio 6 re-creates a gr.Plot's element on every value update (measured on 6.31: the div is
# replaced, so Plotly.react and uirevision cannot keep a zoom). This script remembers the axis
# ranges a user set on each plot, keyed by the plot's container id and its uirevision (which
# names the run), and re-applies them when that plot is drawn again; a double-click (autorange)
# forgets them. tests/e2e checks that a zoom survives a live refresh.
KEEP_ZOOM_JS = r"""
(() => {
  // Gradio 6 re-creates a gr.Plot's element on every value update, so Plotly's uirevision
  // cannot keep the user's zoom. Remember axis ranges per (plot container, uirevision) from
  // plotly_relayout events and re-apply them whenever that plot is drawn again.
  const saved = {};
  const keyOf = (gd) => {
    const box = gd.closest("[id]");
    return (box ? box.id : "") + "|" + ((gd.layout && gd.layout.uirevision) || "");
  };
  const hook = (gd) => {
    if (gd.__ggZoom || !gd._fullLayout || !gd.on || !window.Plotly) return;
    gd.__ggZoom = true;
    const key = keyOf(gd);
    gd.on("plotly_relayout", (ev) => {
      if (gd.__ggApplying) return;
      const s = (saved[key] = saved[key] || {});
      for (const [name, val] of Object.entries(ev || {})) {
        const m = name.match(/^([xy]axis\d*)\.(autorange|range(?:\[([01])\])?)$/);
        if (!m) continue;
        if (m[2] === "autorange") { if (val) delete s[m[1]]; }
        else if (m[3] === undefined) s[m[1]] = [val[0], val[1]];
        else { s[m[1]] = s[m[1]] || [null, null]; s[m[1]][+m[3]] = val; }
      }
    });
    const s = saved[key];
    if (s && Object.keys(s).length) {
      const upd = {};
      for (const [ax, r] of Object.entries(s)) {
        if (r[0] === null || r[1] === null) continue;
        upd[ax + ".range"] = r;
        upd[ax + ".autorange"] = false;
      }
      gd.__ggApplying = true;
      Promise.resolve(window.Plotly.relayout(gd, upd)).finally(() => { gd.__ggApplying = false; });
    }
  };
  const scan = () => document.querySelectorAll(".js-plotly-plot").forEach(hook);
  new MutationObserver(scan).observe(document.documentElement, { childList: true, subtree: true });
})();
"""


class AuthConfigError(ValueError):
    """GG_AUTH / GG_AUTH_FILE is malformed, or a public bind has no auth."""


# ---- auth ----------------------------------------------------------------------------------
def _pair(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise AuthConfigError(f"{where} must be 'user:password' with a non-empty user and password")
    return user.strip(), password


def auth_credentials(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The (user, password) pairs from GG_AUTH and GG_AUTH_FILE; empty means no auth."""
    env = os.environ if env is None else env
    creds: list[tuple[str, str]] = []
    raw = env.get("GG_AUTH", "").strip()
    if raw:
        creds.append(_pair(raw, "GG_AUTH"))
    path = env.get("GG_AUTH_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError as e:
            raise AuthConfigError(f"cannot read GG_AUTH_FILE {path}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                creds.append(_pair(line, f"GG_AUTH_FILE {path} line {n}"))
        if not any(True for line in lines if line.strip() and not line.strip().startswith("#")):
            raise AuthConfigError(f"GG_AUTH_FILE {path} holds no 'user:password' line")
    return creds


def make_auth(creds: list[tuple[str, str]]) -> Callable[[str, str], bool] | None:
    """A constant-time checker for Gradio's login (None when there are no credentials)."""
    if not creds:
        return None
    table = [(u.encode(), p.encode()) for u, p in creds]

    def check(username: str, password: str) -> bool:
        u, p = (username or "").encode(), (password or "").encode()
        ok = False
        for cu, cp in table:
            ok |= hmac.compare_digest(u, cu) & hmac.compare_digest(p, cp)
        return ok

    return check


def is_loopback(host: str) -> bool:
    host = (host or "").strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, creds: list[tuple[str, str]]) -> None:
    """Refuse to serve beyond this machine without a login."""
    if not creds and not is_loopback(host):
        raise AuthConfigError(
            f"refusing to serve on {host} without auth: anyone who can reach this address could start, "
            "stop and delete runs. Set GG_AUTH=user:password (or GG_AUTH_FILE=path with one user:password "
            "per line), or bind to 127.0.0.1.")


# ---- the Blocks ----------------------------------------------------------------------------
def build_demo() -> gr.Blocks:
    """The pages as routes of one Blocks: Runs (/), New run, Run, Compare, Experiments, Judge (/judgments)."""
    from app.pages import compare, experiments, judge, new_run, run_detail, runs

    routes = (("New run", "/new", new_run.page), ("Run", "/run", run_detail.page), ("Compare", "/compare", compare.page),
              ("Experiments", "/experiments", experiments.page), ("Judge", "/judgments", judge.page))
    # One Navbar per page: it names the main page "Runs" on every route.
    with gr.Blocks(title="GRPO-Guard Studio", fill_width=True) as demo:
        gr.Navbar(main_page_name="Runs")
        runs.page.render()
    for title, path, page in routes:
        with demo.route(title, path):
            gr.Navbar(main_page_name="Runs")
            page.render()
    # Default 1 would serialise every tab's 1 s poll behind one slot (STACK.md G5).
    demo.queue(default_concurrency_limit=8)
    return demo


def _warm_up() -> None:
    """Plotly loads its validators lazily (~0.1 s on first use): pay that at startup."""
    from app import figures

    figures.proxy_gold_figure({"eval/proxy": ([0, 1], [0.0, 1.0])}).to_json()


def create_app(*, host: str = "127.0.0.1", port: int = 7860, env: Mapping[str, str] | None = None,
               check_schema: bool = True) -> FastAPI:
    """FastAPI with ``/health`` and the Gradio UI mounted at ``/``. Raises AuthConfigError for
    bad auth settings or a public ``host`` without auth, and a StoreError for a bad database."""
    from grpo_guard.store import db

    creds = auth_credentials(env)
    check_bind(host, creds)
    if check_schema:
        db.verify_schema()
    artifacts = db.artifacts_root()
    os.makedirs(artifacts, exist_ok=True)
    _warm_up()

    app = FastAPI(title="GRPO-Guard Studio", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> JSONResponse:
        """Liveness and store reachability (for compose healthchecks). No auth needed."""
        try:
            from grpo_guard.store import queries

            queries.list_runs(limit=1)
        except Exception as e:  # report, don't raise: a healthcheck wants a status code
            return JSONResponse({"status": "error", "version": __version__, "store": str(e).splitlines()[0]},
                                status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    from app import judge_routes

    judge_routes.install(app)  # /judge: plain HTML beside Gradio (blinding), before the mount at '/'
    demo = build_demo()
    with warnings.catch_warnings():  # Gradio warns that multipage apps have no SSR; we never use SSR
        warnings.filterwarnings("ignore", message="SSR mode is not supported")
        return gr.mount_gradio_app(
            app, demo, "/", server_name=host, server_port=port, auth=make_auth(creds),
            auth_message="GRPO-Guard Studio: sign in (GG_AUTH / GG_AUTH_FILE).",
            allowed_paths=[artifacts], css_paths=[CSS_PATH], theme=gr.themes.Soft(primary_hue="blue"),
            head=f"<script>{KEEP_ZOOM_JS}</script>",
            footer_links=["api", "settings"], show_error=True, ssr_mode=False, run_history=False,
        )

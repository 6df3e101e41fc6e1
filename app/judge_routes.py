"""``/judge``: the blind A/B judging instrument, a plain FastAPI + HTML/JS page beside the
Gradio UI (issue #22).

Why not a Gradio page: Gradio's image components send file URLs (``/gradio_api/file=<path>``,
whose artifact paths name the run and step), ``orig_name`` and the component state in their
payloads, and its key handling and prefetch go through the queue. Here the browser only ever
receives:

* ``GET /judge?session=N``: the page (no run, step or algorithm in it);
* ``POST /judge/api/next``: ``{trial, prompt, left, right, done, total}`` where ``trial`` is a
  random token and ``left`` / ``right`` are ``/judge/img/<random token>``;
* ``GET /judge/img/<token>``: the PNG bytes with their text chunks removed, no file name;
* ``POST /judge/api/choose``: ``{trial, choice, reasons, decide_ms}`` -> ``{ok, done, total}``.

Tokens map to samples only in this process (``TrialBook``), per judge, and expire. Sides are a
fair coin per trial. The judge is the logged-in user whenever the server has a login (the
same cookie Gradio's login sets; no cookie, no page, 401 on the API); on a loopback server
without login the judge types a name once (kept in the browser).
"""

from __future__ import annotations

import secrets
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

TRIAL_TTL_S = 3600.0
MAX_PENDING = 4  # trials handed to one judge and not yet answered (the shown one and the prefetched)
NAME_MAX = 80


# ---- the book of handed-out trials ---------------------------------------------------------
@dataclass
class Trial:
    token: str
    session_id: int
    judge: str
    a: Any  # JudgeSample
    b: Any
    a_left: bool
    images: dict[str, str] = field(default_factory=dict)  # "left"/"right" -> image token
    issued: float = field(default_factory=time.monotonic)

    @property
    def pair(self) -> frozenset[int]:
        return frozenset((self.a.id, self.b.id))

    def sample(self, side: str) -> Any:
        return self.a if (side == "left") == self.a_left else self.b


class TrialBook:
    """Trials handed out and not yet answered, and the image tokens that point at their
    samples. In memory: a token means nothing outside this server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trials: dict[str, Trial] = {}
        self._images: dict[str, tuple[str, str]] = {}  # image token -> (trial token, side)

    def _expire(self) -> None:
        now = time.monotonic()
        for t in [t for t in self._trials.values() if now - t.issued > TRIAL_TTL_S]:
            self._drop(t)

    def _drop(self, t: Trial) -> None:
        self._trials.pop(t.token, None)
        for tok in t.images.values():
            self._images.pop(tok, None)

    def pending(self, session_id: int, judge: str) -> list[Trial]:
        with self._lock:
            self._expire()
            return sorted((t for t in self._trials.values() if t.session_id == session_id and t.judge == judge),
                          key=lambda t: t.issued)

    def pending_pairs(self, judge: str) -> set[frozenset[int]]:
        """The sample pairs handed to this judge and not yet answered, in every session (two
        tabs on two sessions that share a pair must not both show it)."""
        with self._lock:
            self._expire()
            return {t.pair for t in self._trials.values() if t.judge == judge}

    def reset(self, session_id: int, judge: str) -> None:
        """Forget a judge's unanswered trials (a reloaded page starts afresh)."""
        with self._lock:
            for t in [t for t in self._trials.values() if t.session_id == session_id and t.judge == judge]:
                self._drop(t)

    def issue(self, session_id: int, judge: str, a: Any, b: Any, a_left: bool) -> Trial:
        with self._lock:
            mine = sorted((t for t in self._trials.values() if t.session_id == session_id and t.judge == judge),
                          key=lambda t: t.issued)
            for old in mine[: max(0, len(mine) - MAX_PENDING + 1)]:
                self._drop(old)
            t = Trial(secrets.token_urlsafe(18), session_id, judge, a, b, a_left)
            for side in ("left", "right"):
                tok = secrets.token_urlsafe(18)
                t.images[side] = tok
                self._images[tok] = (t.token, side)
            self._trials[t.token] = t
            return t

    def get(self, token: str) -> Trial | None:
        with self._lock:
            return self._trials.get(str(token))

    def close(self, token: str) -> None:
        with self._lock:
            t = self._trials.get(token)
            if t is not None:
                self._drop(t)

    def image(self, token: str) -> tuple[Trial, str] | None:
        with self._lock:
            found = self._images.get(str(token))
            if found is None:
                return None
            t = self._trials.get(found[0])
            return None if t is None else (t, found[1])


BOOK = TrialBook()
# next_trial runs in the thread pool: choosing a pair and booking it as pending is one step
_HANDING_OUT = threading.Lock()


# ---- images ----------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Chunks that carry pixels or how to show them; text, time and EXIF chunks could name a run.
PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs"}


def strip_png(data: bytes) -> bytes:
    """The PNG with only the chunks needed to draw it (no tEXt / zTXt / iTXt / tIME / eXIf);
    ValueError for something that is not a well-formed PNG."""
    if not data.startswith(PNG_MAGIC):
        raise ValueError("not a PNG image")
    out, pos = [PNG_MAGIC], len(PNG_MAGIC)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG image")
        if kind in PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


# ---- who is judging --------------------------------------------------------------------------
def _gradio_app(app: FastAPI) -> Any:
    """The Gradio app mounted at '/' (it owns the login: its ``auth`` and session tokens)."""
    cached = getattr(app.state, "gg_gradio_app", None)
    if cached is not None:
        return cached
    from starlette.routing import Mount

    for r in app.routes:
        if isinstance(r, Mount) and hasattr(r.app, "tokens"):
            app.state.gg_gradio_app = r.app
            return r.app
    return None


def login_required(request: Request) -> bool:
    g = _gradio_app(request.app)
    return g is not None and (g.auth is not None or getattr(g, "auth_dependency", None) is not None)


def logged_in_user(request: Request) -> str | None:
    """The user of Gradio's login cookie (as Gradio's own ``/user`` route reads it), else None."""
    g = _gradio_app(request.app)
    if g is None:
        return None
    token = (request.cookies.get(f"access-token-{g.cookie_id}")
             or request.cookies.get(f"access-token-unsecure-{g.cookie_id}"))
    return g.tokens.get(token) if token else None


class ApiError(Exception):
    """A judging API call answered with ``{"error": message}`` and this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def judge_of(request: Request, typed: Any) -> str:
    """The logged-in user when the server has a login; else the name typed on this machine."""
    if login_required(request):
        user = logged_in_user(request)
        if not user:
            raise ApiError(401, "sign in first: this server requires a login")
        return str(user)[:200]
    name = typed.strip() if isinstance(typed, str) else ""
    if not name or len(name) > NAME_MAX:
        raise ApiError(400, f"type your name (1 to {NAME_MAX} characters) before judging")
    return name


# ---- routes ----------------------------------------------------------------------------------
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


JudgeCall = Callable[[dict[str, Any], str], dict[str, Any]]


def judge_api(handler: JudgeCall) -> Callable[[Request], Awaitable[Response]]:
    """The prelude every judging API call shares: read the JSON body, find the judge (the
    signed-in user, or the typed name), run ``handler(body, judge)`` off the event loop (it
    reads the store) and answer its dict as JSON, or an ``ApiError`` as ``{"error"}``."""

    async def route(request: Request) -> Response:  # no functools.wraps: FastAPI would read the handler's signature
        body = await _body(request)
        try:
            judge = judge_of(request, body.get("name"))
            data = await run_in_threadpool(handler, body, judge)
        except ApiError as e:
            return _error(e.status, str(e))
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    route.__name__ = handler.__name__
    return route


def next_trial(body: dict[str, Any], judge: str) -> dict[str, Any]:
    """``POST /judge/api/next``: the judge's next blind pair of the session (a fresh trial
    token, the prompt, two image URLs, sides by a fair coin), or ``trial: None`` when done."""
    from grpo_guard.judging import sessions as S
    from grpo_guard.store import judgments as J

    sid = _int(body.get("session"))
    if sid is None:
        raise ApiError(400, "no judging session in the request")
    try:
        sess = J.get_session(sid)
    except LookupError:
        raise ApiError(404, f"no judging session {sid}") from None
    with _HANDING_OUT:  # two calls at once (a prefetch and a reload) must not both pick the same pair
        if body.get("reset"):
            BOOK.reset(sid, judge)
        prog = S.progress(sess, judge)
        found = S.next_pair(sess, judge, BOOK.pending_pairs(judge))
        if found is None:
            return {"trial": None, "done": prog.done, "total": prog.total}
        t = BOOK.issue(sid, judge, *found, a_left=S.coin())
    return {"trial": t.token, "prompt": t.a.prompt, "left": f"judge/img/{t.images['left']}",
            "right": f"judge/img/{t.images['right']}", "done": prog.done, "total": prog.total}


def choose(body: dict[str, Any], judge: str) -> dict[str, Any]:
    """``POST /judge/api/choose``: store the judge's choice on an open trial."""
    from grpo_guard.judging import sessions as S
    from grpo_guard.store import judgments as J
    from grpo_guard.store.db import StoreError

    t = BOOK.get(str(body.get("trial") or ""))
    if t is None or t.judge != judge:
        raise ApiError(404, "this pair is no longer open (expired or already judged); the next one follows")
    choice = body.get("choice")
    if choice not in J.CHOICES:
        raise ApiError(400, f"choice must be one of {', '.join(J.CHOICES)}")
    reasons = body.get("reasons") or []
    if not isinstance(reasons, list) or any(r not in S.REASONS for r in reasons):
        raise ApiError(400, f"reasons are any of: {', '.join(S.REASONS)}")
    try:
        J.add_judgment(t.session_id, judge, t.a, t.b, left_sample_id=t.sample("left").id, choice=choice,
                       reasons=reasons, decide_ms=_int(body.get("decide_ms")))
    except (StoreError, ValueError) as e:
        raise ApiError(400 if isinstance(e, ValueError) else 503, str(e)) from None
    BOOK.close(t.token)
    prog = S.progress(J.get_session(t.session_id), judge)
    return {"ok": True, "done": prog.done, "total": prog.total}


def install(app: FastAPI) -> None:
    """Add the judging routes to ``app`` (call before Gradio is mounted at '/', which would
    otherwise answer every path)."""
    from app.judge_page import judge_html, login_html

    @app.get("/judge", include_in_schema=False)
    def judge_page(request: Request) -> Response:
        sid = _int(request.query_params.get("session"))
        if sid is None:
            return RedirectResponse("judgments", status_code=302)
        if login_required(request) and not logged_in_user(request):
            return HTMLResponse(login_html(), headers={"Cache-Control": "no-store"})
        return HTMLResponse(judge_html(sid, ask_name=not login_required(request)),
                            headers={"Cache-Control": "no-store"})

    app.post("/judge/api/next", include_in_schema=False)(judge_api(next_trial))
    app.post("/judge/api/choose", include_in_schema=False)(judge_api(choose))

    @app.get("/judge/img/{token}", include_in_schema=False)
    def image(token: str, request: Request) -> Response:
        from grpo_guard.store import artifacts

        found = BOOK.image(token)
        if found is None:
            return _error(404, "no such image")
        t, side = found
        if login_required(request) and logged_in_user(request) != t.judge:
            return _error(401, "sign in first: this server requires a login")
        try:
            with open(artifacts.resolve(t.sample(side).image_location), "rb") as fh:
                data = fh.read()
        except (OSError, ValueError):
            return _error(410, "this image is gone from the artifact store")
        try:
            data = strip_png(data)
        except ValueError:  # eval samples are PNGs; other bytes could carry metadata we do not strip
            return _error(415, "this sample is not a PNG image, so it is not shown blind")
        # private: the same token is fetched once for the prefetch and shown from the browser's copy
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

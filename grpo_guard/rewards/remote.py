"""A reward scored by a reward server (:mod:`grpo_guard.rewards.protocol`), declared by an operator
(:mod:`grpo_guard.rewards.servers`).

A failure is never a score. A timeout, a refused or dropped connection, a 5xx or 429, a body that
is not the protocol's JSON, a wrong number of scores, a NaN: each is retried ``retries`` times
with exponential backoff (``backoff`` s, doubled each time); then :class:`RewardServerError` names
the server and the last reason, the trainer's epoch fails with it, the run is marked failed and
stays resumable from its last checkpoint (``grpo-guard runs resume ID``). A 4xx other than 429
(a wrong token, an unknown reward name, a request too large) cannot heal by retrying and fails at
once. No score of a failed batch is ever recorded.

Each call's round-trip time and each failed attempt are counted; the trainer logs them per epoch
as ``reward/<name>/latency`` and ``reward/<name>/failures`` (:meth:`RemoteReward.take_stats`).
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from grpo_guard.rewards.protocol import ProtocolError, parse_answer, score_request
from grpo_guard.rewards.servers import ServerSpec

MAX_ANSWER_BYTES = 16 << 20  # an answer is B numbers (and a few detail lists): never megabytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The declared URL is the only address a worker talks to: a redirect is an error, not a hop."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


# http(s) only (servers.parse_entry checks the scheme); no redirects
_OPENER = urllib.request.build_opener(_NoRedirect)


class RewardServerError(RuntimeError):
    """A reward server failed for good (after its retries); the message names it and the reason."""


class _Permanent(Exception):
    """A failure retrying cannot fix (4xx other than 429)."""


class RemoteReward:
    """``reward(images, prompts) -> (B,)`` scored by ``server`` in batches of ``server.batch_size``."""

    def __init__(self, name: str, server: ServerSpec, **options: Any):
        if options:
            raise ValueError(f"reward {name!r} is served by {server.url}; it takes no options here "
                             f"(got {', '.join(options)}): set them where the server runs")
        self.name, self.server = name, server
        server.token()  # a missing token fails now, before any model loads, not at the first batch
        self._latency: list[float] = []
        self._failures = 0

    # -- the reward interface --
    def __call__(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self.details(images, prompts)[0]

    def details(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(scores (B,), {detail key: (B,) with NaN where it does not apply})."""
        images = np.asarray(images)
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores, extras = np.empty(len(images), np.float64), {}
        for a in range(0, len(images), self.server.batch_size):
            b = min(a + self.server.batch_size, len(images))
            s, x = self._score_batch(images[a:b], list(prompts[a:b]))
            scores[a:b] = s
            for k, v in x.items():
                extras.setdefault(k, np.full(len(images), np.nan))[a:b] = v
        return scores, extras

    def take_stats(self) -> dict[str, float]:
        """Mean round-trip seconds of the successful requests and the number of failed attempts
        since the last call (then reset)."""
        out = {"failures": float(self._failures)}
        if self._latency:
            out["latency"] = float(np.mean(self._latency))
        self._latency, self._failures = [], 0
        return out

    # -- one batch, with retries --
    def _score_batch(self, images: np.ndarray, prompts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        s = self.server
        body = score_request(s.reward, images, prompts)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = s.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        reason = "no attempt was made"
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.backoff * 2 ** (attempt - 1))
            t0 = time.perf_counter()
            try:
                answer = self._post(body, headers)
                out = parse_answer(answer, len(images))
            except _Permanent as e:
                self._failures += 1
                raise RewardServerError(f"reward server {self.name!r} ({s.url}) refused the request: {e}; "
                                        "no reward of this batch was recorded") from None
            except (ProtocolError, OSError, http.client.HTTPException, ValueError) as e:
                self._failures += 1
                reason = _describe(e, s.timeout)
                continue
            self._latency.append(time.perf_counter() - t0)
            return out
        raise RewardServerError(
            f"reward server {self.name!r} ({s.url}) failed {s.retries + 1} time(s), last: {reason}; no reward of "
            "this batch was recorded (fix the server, then resume the run from its last checkpoint)")

    def _post(self, body: bytes, headers: dict[str, str]) -> bytes:
        s = self.server
        req = urllib.request.Request(f"{s.url}/v1/score", data=body, headers=headers, method="POST")
        deadline = time.monotonic() + s.timeout
        try:
            resp = _OPENER.open(req, timeout=s.timeout)
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if e.code < 500 and e.code != 429:  # 3xx (no redirects followed), 4xx: retrying cannot help
                raise _Permanent(f"HTTP {e.code}{detail}") from None
            raise ProtocolError(f"HTTP {e.code}{detail}") from None
        with resp:
            chunks, size = [], 0
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise ProtocolError(f"the answer is larger than {MAX_ANSWER_BYTES >> 20} MiB")
                if time.monotonic() > deadline:  # a server dripping bytes must not outlast the timeout
                    raise TimeoutError("timed out")
                chunks.append(chunk)
        return b"".join(chunks)


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        from grpo_guard.rewards.protocol import loads

        msg = loads(e.read(4096)).get("error")
        return f" ({str(msg)[:200]})" if msg else ""
    except Exception:
        return ""


def _describe(e: BaseException, timeout: float) -> str:
    if isinstance(e, (TimeoutError, socket.timeout)) or "timed out" in str(e):
        return f"no answer within the {timeout:g} s timeout"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    if isinstance(e, (ConnectionError, http.client.HTTPException)):
        return f"the connection failed ({type(e).__name__}: {str(e)[:120] or 'closed'})"
    return str(e)[:300] or type(e).__name__

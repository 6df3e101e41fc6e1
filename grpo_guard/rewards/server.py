"""``grpo-guard reward-server --reward NAME``: serve any registered reward with the reward-server
protocol (:mod:`grpo_guard.rewards.protocol`), e.g. GenEval or a 7B judge on another GPU box.

Built on the standard library's ``http.server`` on purpose: the worker image (engine + ocr
extras) has no FastAPI or uvicorn, and a scorer needs nothing they add; one request is scored at
a time (the model owns its GPU), other connections wait their turn.

Bind rules, as ``grpo-guard serve``: loopback without a token is fine; any other address needs a
token (``GG_REWARD_SERVER_TOKEN``, or the variable ``--token-env`` names), which every request
but ``/health`` must send as ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import click

from grpo_guard.rewards.protocol import PROTOCOL, ProtocolError, parse_request, score_answer

TOKEN_ENV = "GG_REWARD_SERVER_TOKEN"
MAX_BODY_BYTES = 512 << 20  # 4096 PNGs of 1024² are ~8 GiB raw but far less as PNG; refuse beyond
log = logging.getLogger("grpo_guard.reward_server")


LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")  # as `grpo-guard serve` (app/main.py)


def is_loopback(host: str) -> bool:
    host = (host or "").strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token (ValueError, one sentence)."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to serve a reward on {host} without a token: anyone who can reach it could "
                         f"use its GPU. Set {TOKEN_ENV} (or --token-env VAR), or bind to 127.0.0.1.")


class RewardServer(ThreadingHTTPServer):
    """The HTTP server, holding the reward and its lock (one scoring at a time)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], reward: Any, name: str, *, token: str | None = None,
                 kind: str = "any", backbones: tuple[str, ...] = (), max_body: int = MAX_BODY_BYTES):
        super().__init__(address, _Handler)
        self.reward, self.reward_name, self.token = reward, name, token
        self.kind, self.backbones, self.max_body = kind, tuple(backbones), max_body
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"
    timeout = 300  # seconds a connection may stall mid-request before its thread lets go

    def log_message(self, fmt: str, *args: Any) -> None:  # the access log goes to logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"protocol": PROTOCOL, "error": message}).encode())

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        got = self.headers.get("Authorization", "")
        ok = hmac.compare_digest(got.encode(), f"Bearer {token}".encode())
        if not ok:
            self._error(401, "missing or wrong bearer token")
        return ok

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            return self._send(200, b'{"ok": true}')
        if self.path == "/v1/info":
            if self._authorised():
                s = self.server
                self._send(200, json.dumps({"protocol": PROTOCOL, "reward": s.reward_name, "kind": s.kind,
                                            "backbones": list(s.backbones)}).encode())
            return None
        return self._error(404, f"no such path {self.path[:100]!r}; POST /v1/score")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/score":
            return self._error(404, f"no such path {self.path[:100]!r}; POST /v1/score")
        if not self._authorised():
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "a Content-Length header is required")
        if length < 0 or length > self.server.max_body:
            self.close_connection = True
            return self._error(413, f"the request is larger than {self.server.max_body >> 20} MiB; send smaller batches")
        body = self.rfile.read(length)
        try:
            name, images, prompts = parse_request(body)
        except ProtocolError as e:
            return self._error(400, str(e))
        if name != self.server.reward_name:
            return self._error(404, f"this server scores {self.server.reward_name!r}, not {name[:100]!r}")
        t0 = time.perf_counter()
        try:
            with self.server.lock:
                fn = self.server.reward
                detail = getattr(fn, "details", None)
                scores, extras = detail(images, prompts) if callable(detail) else (fn(images, prompts), None)
                if len(scores) != len(images):
                    raise ValueError(f"the reward returned {len(scores)} scores for {len(images)} images")
                answer = score_answer(scores, extras)
        except Exception as e:  # the reward failed: a 500 with the reason (the client retries, then fails loudly)
            log.warning("scoring %d images failed: %s", len(images), e)
            return self._error(500, f"{type(e).__name__}: {str(e)[:300]}")
        log.info("scored %d images in %.3f s", len(images), time.perf_counter() - t0)
        return self._send(200, answer)


def make_server(reward_name: str, host: str = "127.0.0.1", port: int = 8700, *, token: str | None = None,
                reward: Any = None, **options: Any) -> RewardServer:
    """A server for the registered reward ``reward_name`` (built with ``options``, or the given
    ``reward`` object), bound and ready for ``serve_forever()``. ValueError on a public bind
    without a token."""
    from grpo_guard.rewards import REGISTRY, build_reward

    check_bind(host, token)
    spec = REGISTRY.get(reward_name)
    if spec is None and reward is None:
        raise ValueError(f"unknown reward {reward_name!r}; `grpo-guard rewards list` shows the registered ones")
    fn = reward if reward is not None else build_reward(reward_name, **options)
    return RewardServer((host, port), fn, reward_name, token=token, kind=spec.kind if spec else "any",
                        backbones=spec.backbones if spec else ())


@click.command("reward-server")
@click.option("--reward", "reward_name", required=True, help="The registered reward to serve (grpo-guard rewards list).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help=f"Address to bind. Anything but loopback requires a token (${TOKEN_ENV} or --token-env).")
@click.option("--port", default=8700, show_default=True, type=click.IntRange(1, 65535))
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="An option of the reward's factory, as in a run config's reward_options (repeatable), "
                   "e.g. --option path=/models/UnifiedReward-qwen-7b --option device=cuda.")
@click.option("--token-env", default=TOKEN_ENV, show_default=True,
              help="The environment variable holding the bearer token clients must send.")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def reward_server_cmd(reward_name: str, host: str, port: int, options: tuple[str, ...], token_env: str,
                      log_level: str) -> None:
    """Serve one registered reward over HTTP (protocol grpo-guard-reward/1: POST /v1/score)."""
    from grpo_guard.config import ConfigError, safe_yaml
    from grpo_guard.rewards import REGISTRY, check_option

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    token = os.environ.get(token_env, "").strip() or None
    try:
        check_bind(host, token)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if reward_name not in REGISTRY:
        raise click.ClickException(f"unknown reward {reward_name!r}; registered: {', '.join(sorted(REGISTRY))}")
    opts: dict[str, Any] = {}
    for item in options:
        key, sep, text = item.partition("=")
        if not sep:
            raise click.ClickException(f"--option {item!r} is not KEY=VALUE")
        try:
            value = safe_yaml.load_value(text, field=f"--option {key}")
        except ConfigError as e:
            raise click.ClickException(e.errors[0][1]) from None
        if why := check_option(reward_name, key.strip(), value):
            raise click.ClickException(f"--option {key.strip()}: {why}")
        opts[key.strip()] = value
    try:
        server = make_server(reward_name, host, port, token=token, **opts)
    except OSError as e:  # the port is taken, or no permission
        raise click.ClickException(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    click.echo(f"serving reward {reward_name!r} on {server.url}/v1/score ({PROTOCOL}"
               f"{', bearer token required' if token else ''}); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

"""Reward servers an operator declares: a reward name bound to a URL, outside every run config.

Where (the first that is set wins):

1. ``GG_REWARD_SERVERS``: a path to a YAML file, or the YAML/JSON mapping itself (starting ``{``);
2. ``rewards.yaml`` in the data directory (``GG_DATA_DIR``, default ``./.grpo-guard``).

The file::

    servers:
      geneval_remote:                  # the reward name run configs use
        url: http://gpu-box:8700       # http or https; a `grpo-guard reward-server` or the same protocol
        reward: geneval                # the name on the server (default: the same name)
        kind: proxy                    # proxy | gold | any (default any)
        backbones: [sd3, flux]         # default: every backbone
        timeout: 60                    # seconds per request (default 60)
        batch_size: 32                 # images per request (default 32)
        retries: 3                     # extra tries after a failure, with backoff (default 3)
        backoff: 0.5                   # seconds before the first retry, doubled after each (default 0.5)
        token_env: GG_GENEVAL_TOKEN    # the bearer token is read from this variable (never the file)

A run config names ``geneval_remote`` like any reward and can never name a URL, so a shared YAML
cannot point a worker at an address of its choosing. A bad entry is skipped with one warning
naming it; a name taken by a built-in reward or a plugin is refused.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENV = "GG_REWARD_SERVERS"
FILE_NAME = "rewards.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_FILE_BYTES = 1 << 20
log = logging.getLogger("grpo_guard.rewards")


@dataclass(frozen=True)
class ServerSpec:
    """One declared reward server (see the module docstring for the fields)."""

    name: str
    url: str              # base URL, no trailing slash
    reward: str           # the reward's name on the server
    kind: str = "any"
    backbones: tuple[str, ...] = ("toy", "sd3", "flux")
    timeout: float = 60.0
    batch_size: int = 32
    retries: int = 3
    token_env: str | None = None
    backoff: float = 0.5  # seconds before the first retry, doubled after each

    def token(self) -> str | None:
        """The bearer token from ``token_env``; ValueError when that variable is unset."""
        if not self.token_env:
            return None
        value = os.environ.get(self.token_env, "").strip()
        if not value:
            raise ValueError(f"reward server {self.name!r} ({self.url}) needs a token in ${self.token_env}, "
                             "which is not set in this process")
        return value


def _source() -> tuple[str, str | None]:
    """(where, YAML text) of the declarations, or (where, None) when none are declared."""
    raw = os.environ.get(ENV, "").strip()
    if raw.startswith("{"):
        return ENV, raw
    if raw:
        path = os.path.expanduser(raw)
    else:
        path = os.path.join(os.path.abspath(os.environ.get("GG_DATA_DIR") or ".grpo-guard"), FILE_NAME)
        if not os.path.isfile(path):
            return path, None
    with open(path, "rb") as fh:  # an unreadable declared file is reported by register_servers
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return path, data.decode("utf-8")


def parse_entry(name: str, entry: Any) -> ServerSpec:
    """One declaration -> ServerSpec; ValueError says what is wrong with it."""
    from grpo_guard.rewards.registry import BACKBONES, KINDS

    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("the name is not a reward name (letters, digits, '_' and '-')")
    if not isinstance(entry, dict):
        raise ValueError("must be a mapping with at least `url`")
    known = {"url", "reward", "kind", "backbones", "timeout", "batch_size", "retries", "token_env", "backoff"}
    if unknown := sorted(set(map(str, entry)) - known):
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    url = entry.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise ValueError(f"url must be http(s)://host[:port][/path] without credentials or a query, got {url!r}")
    reward = entry.get("reward", name)
    if not isinstance(reward, str) or not _NAME.match(reward):
        raise ValueError(f"reward must be a reward name, got {reward!r}")
    kind = entry.get("kind", "any")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    backbones = entry.get("backbones", list(BACKBONES))
    if isinstance(backbones, str):
        backbones = [backbones]
    if not isinstance(backbones, list) or not backbones or any(b not in BACKBONES for b in backbones):
        raise ValueError(f"backbones must be some of {', '.join(BACKBONES)}, got {backbones!r}")

    def number(key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
        v = entry.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) \
                or (integer and int(v) != v):
            raise ValueError(f"{key} must be {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}], got {v!r}")
        return int(v) if integer else float(v)

    token_env = entry.get("token_env")
    if token_env is not None and (not isinstance(token_env, str) or not _ENV_NAME.match(token_env)):
        raise ValueError(f"token_env must name an environment variable, got {token_env!r}")
    return ServerSpec(name=name, url=url.rstrip("/"), reward=reward, kind=kind, backbones=tuple(backbones),
                      timeout=number("timeout", 60.0, 0.05, 3600.0), batch_size=number("batch_size", 32, 1, 4096, True),
                      retries=number("retries", 3, 0, 20, True), token_env=token_env,
                      backoff=number("backoff", 0.5, 0.0, 60.0))


def declared_servers() -> tuple[list[ServerSpec], list[str]]:
    """(the valid declarations, one sentence per problem)."""
    from grpo_guard.config import safe_yaml

    try:
        where, text = _source()
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [], [f"reward servers: cannot read ${ENV} ({e}); no server is declared"]
    if text is None:
        return [], []
    try:
        data = safe_yaml.load_value(text, field=ENV)
    except Exception as e:  # ConfigError, or a YAML error: the message names the place
        msg = e.errors[0][1] if hasattr(e, "errors") else str(e)
        return [], [f"reward servers in {where}: not valid YAML ({msg}); no server is declared"]
    if isinstance(data, dict) and "servers" in data:
        data = data["servers"]
    if not isinstance(data, dict):
        return [], [f"reward servers in {where}: expected a mapping `servers: {{name: {{url: ...}}}}`"]
    specs, problems = [], []
    for name, entry in data.items():
        try:
            specs.append(parse_entry(name, entry))
        except ValueError as e:
            problems.append(f"reward server {str(name)[:100]!r} in {where} skipped: {e}")
    return specs, problems


def register_servers() -> list[str]:
    """Register every declared server's reward; returns one sentence per problem (also logged)."""
    from grpo_guard.rewards.registry import REGISTRY, register

    specs, problems = declared_servers()
    for s in specs:
        if dict.__contains__(REGISTRY, s.name):
            problems.append(f"reward server {s.name!r} ({s.url}) skipped: the name is taken by "
                            f"{dict.__getitem__(REGISTRY, s.name).source}")
            continue
        register(s.name, "grpo_guard.rewards.remote:RemoteReward", s.kind, backbones=s.backbones,  # type: ignore[arg-type]
                 source=f"server {s.url}", server=s, description=f"{s.reward} on {s.url}")
    for p in problems:
        log.warning("%s", p)
    return problems

"""YAML for run configs: parsed with limits, with scalars that mean what the user typed.

Imports no torch (the app uses it). Two passes over the text:

1. The event stream (flat, never recursive, so 20,000 nesting levels cannot overflow the
   stack) is checked against :data:`LIMITS`: nesting depth, node count *after* alias expansion
   (an alias counts as the whole subtree it names, so an alias bomb is refused from a few
   hundred bytes of text without expanding anything), scalar length, number length and
   duplicate keys.
2. Only then is the document built, with a resolver that knows YAML 1.2 core scalars: booleans
   are ``true``/``false`` only (``no``, ``yes``, ``on``, ``off`` stay strings, so the enum value
   ``"no"`` survives), integers and floats are decimal, and dates stay strings.

Every failure is a :class:`~grpo_guard.config.ConfigError` whose field is the top-level key
being read (or ``""`` for the document as a whole) and whose message names the limit.
"""

from __future__ import annotations

import os
import re
import stat
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import BaseResolver

from grpo_guard.config.errors import ConfigError, preview  # noqa: F401  (preview re-exported)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 * 1024
    max_nodes: int = 100_000  # after alias expansion
    max_depth: int = 32
    max_scalar_chars: int = 10_000
    max_number_chars: int = 40


LIMITS = Limits()

_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_BOOL = re.compile(r"^(true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(~|null|Null|NULL|)$")
_NUMBERISH = re.compile(r"^[-+]?[0-9.]")


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema implicit types (plus ``<<`` merge keys)."""


_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""])
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])

try:
    from yaml.cyaml import CParser as _Parser

    class CoreLoader(_Parser, SafeConstructor, _CoreResolver):  # type: ignore[misc]
        """A safe loader (libyaml's parser) with YAML 1.2 core scalars."""

        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            SafeConstructor.__init__(self)
            _CoreResolver.__init__(self)

except ImportError:  # PyYAML built without libyaml: the pure-Python parser, same rules
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class CoreLoader(Reader, Scanner, Parser, Composer, SafeConstructor, _CoreResolver):  # type: ignore[no-redef]
        """A safe loader (pure-Python parser) with YAML 1.2 core scalars."""

        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            _CoreResolver.__init__(self)


try:
    from yaml import CSafeDumper as _BaseDumper
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeDumper as _BaseDumper  # type: ignore[assignment]


class CoreDumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """A safe dumper that quotes every string :class:`CoreLoader` would not read back as a
    string (``1e5``, besides YAML 1.1's ``yes``/``012``), so a dump reads back exactly."""


for _tag, _regexp, _first in (("tag:yaml.org,2002:int", _INT, list("-+0123456789")),
                              ("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))):
    CoreDumper.add_implicit_resolver(_tag, _regexp, _first)


def dump(data: Any, **kw: Any) -> str:
    """YAML text of ``data`` that :func:`load_text` reads back as ``data``."""
    return yaml.dump(data, Dumper=CoreDumper, **kw)


def read_back(text: str) -> Any:
    """``text`` read with the config loader but without the limits (a check of :func:`dump`)."""
    loader = CoreLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _construct_int(loader: SafeConstructor, node: yaml.ScalarNode) -> int:
    # decimal as typed: "012" is twelve (PyYAML's YAML 1.1 reads it as octal ten)
    return int(loader.construct_scalar(node))


CoreLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _error(field: str, message: str, *, syntax: bool = False) -> Exception:
    err = ConfigError([(field, message)])
    err.syntax = syntax  # type: ignore[attr-defined]  # not YAML at all (a --set value may then be text)
    return err


def _short(text: str, n: int = 40) -> str:
    return repr(text[:n] + ("…" if len(text) > n else ""))


class _Frame:
    __slots__ = ("is_map", "nodes", "anchor", "expect_key", "key", "keys")

    def __init__(self, is_map: bool, anchor: str | None) -> None:
        self.is_map = is_map
        self.nodes = 1
        self.anchor = anchor
        self.expect_key = True
        self.key: str | None = None
        self.keys: set[str] = set()


def check_events(text: str, *, limits: Limits = LIMITS, what: str = "config") -> None:
    """Raise ConfigError if ``text`` passes a limit; cheap (linear in the text, nothing built)."""
    stack: list[_Frame] = []
    anchors: dict[str, int] = {}
    total = 0

    def field() -> str:
        return str(stack[0].key) if stack and stack[0].key is not None else ""

    def add(nodes: int) -> None:
        nonlocal total
        total += nodes
        if total > limits.max_nodes:
            raise _error(field(), f"{what}: more than {limits.max_nodes} nodes after alias expansion")
        if stack:
            parent = stack[-1]
            parent.nodes += nodes
            if parent.is_map:
                parent.expect_key = not parent.expect_key

    def as_key(value: str | None) -> None:
        # a scalar in key position names the entry; remember it for error messages and duplicates
        if stack and stack[-1].is_map and stack[-1].expect_key:
            top = stack[-1]
            if value is not None and value in top.keys:
                where = str(stack[0].key) if len(stack) > 1 and stack[0].key is not None else value
                raise _error(where, f"{what}: key {_short(value)} appears twice")
            if value is not None:
                top.keys.add(value)
            top.key = value

    try:
        loader = CoreLoader(text)
    except yaml.YAMLError as e:  # e.g. a NUL character: refused before any event
        raise _yaml_error(e, what) from None
    try:
        while True:
            ev = loader.get_event()
            if ev is None or isinstance(ev, yaml.StreamEndEvent):
                break
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                as_key(None)
                if len(stack) >= limits.max_depth:
                    raise _error(field(), f"{what}: nested deeper than {limits.max_depth} levels")
                stack.append(_Frame(isinstance(ev, yaml.MappingStartEvent), ev.anchor))
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                done = stack.pop()
                if done.anchor is not None:
                    anchors[done.anchor] = done.nodes
                total -= done.nodes - 1  # its children were counted already; add() recounts the whole
                add(done.nodes)
            elif isinstance(ev, yaml.ScalarEvent):
                value = ev.value
                if len(value) > limits.max_scalar_chars:
                    raise _error(field(), f"{what}: a value of {len(value)} characters is longer than the "
                                          f"{limits.max_scalar_chars} allowed")
                if (ev.implicit[0] and len(value) > limits.max_number_chars and _NUMBERISH.match(value)
                        and (_INT.match(value) or _FLOAT.match(value))):
                    raise _error(field(), f"{what}: a number of {len(value)} characters is longer than the "
                                          f"{limits.max_number_chars} allowed")
                as_key(value)
                if ev.anchor is not None:
                    anchors[ev.anchor] = 1
                add(1)
            elif isinstance(ev, yaml.AliasEvent):
                as_key(None)
                add(anchors.get(ev.anchor, 1))
    except yaml.YAMLError as e:
        raise _yaml_error(e, what) from None
    finally:
        loader.dispose()


def _yaml_error(e: yaml.YAMLError, what: str) -> Exception:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = str(getattr(e, "problem", None) or e).split("\n")[0][:200]  # one line, never the text itself
    return _error("", f"the {what} is not valid YAML{where}: {problem}", syntax=True)


def load_text(text: str, *, limits: Limits = LIMITS, what: str = "config") -> Any:
    """The value of one YAML document, after :func:`check_events` (``None`` for empty text)."""
    if len(text) > limits.max_bytes or len(text.encode("utf-8", "surrogatepass")) > limits.max_bytes:
        raise _error("", f"the {what} is larger than {limits.max_bytes // 1024} KiB")
    if not text.strip():
        return None
    check_events(text, limits=limits, what=what)
    loader = CoreLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise _yaml_error(e, what) from None
    finally:
        loader.dispose()


def load_mapping(text: str, *, limits: Limits = LIMITS) -> dict[Any, Any]:
    """A config document: a mapping (empty text is an empty mapping)."""
    data = load_text(text, limits=limits)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _error("", f"the YAML must be a mapping of field: value, got a {type(data).__name__}")
    return data


def load_value(text: str, *, field: str, limits: Limits = LIMITS) -> Any:
    """One ``--set`` value or form box: the same rules, errors named after ``field``."""
    try:
        return load_text(text, limits=limits, what="value")
    except Exception as e:
        errors = getattr(e, "errors", None)
        if errors is None:
            raise
        raise _error(field, errors[0][1]) from None


def read_config_file(path: str, *, limits: Limits = LIMITS) -> str:
    """The text of a config file: a regular file (never a FIFO, socket or device, which could
    block or never end), at most ``limits.max_bytes``, UTF-8. Reads at most one byte more than
    the limit whatever the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise _error("", f"cannot read config file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _error("", f"config file {path} is not a regular file")
        if st.st_size > limits.max_bytes:
            raise _error("", f"config file {path} is larger than {limits.max_bytes // 1024} KiB")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(limits.max_bytes + 1)
    except OSError as e:
        raise _error("", f"cannot read config file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > limits.max_bytes:
        raise _error("", f"config file {path} is larger than {limits.max_bytes // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _error("", f"config file {path} is not UTF-8 text") from None


def strict_kind_errors(loc: str, annotation: Any, value: Any) -> list[tuple[str, str]]:
    """A bool is never a number, and a bool field takes only true/false (pydantic's lax mode
    would read ``epochs: true`` as 1 and ``ema: "yes"`` as True)."""
    if value is None:
        return []
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return strict_kind_errors(loc, args[0], value) if len(args) == 1 else []
    if annotation in (int, float) and isinstance(value, bool):
        return [(loc, f"must be a number, got {value!r} (a boolean)")]
    if annotation is bool and not isinstance(value, bool):
        return [(loc, f"must be true or false, got {preview(value)}")]
    args = typing.get_args(annotation)
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        return [e for i, v in enumerate(value[:1000])
                for e in strict_kind_errors(f"{loc}.{i}", args[min(i, len(args) - 1)], v)][:3]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return [e for k, v in list(value.items())[:1000] for e in strict_kind_errors(f"{loc}.{k}", args[1], v)][:3]
    return []


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-4", "rewards={a: 1}"]`` -> dict (``--set`` of the CLI). Values are YAML with the
    limits and scalars of a config file, so ``mixed_precision=no`` is the string 'no'."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise _error("", f"override {preview(item)} is not of the form key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise _error("", f"override {preview(item)} has an empty key")
        try:
            value = load_value(raw, field=key) if raw.strip() else None
        except ValueError as e:  # a ConfigError
            if not getattr(e, "syntax", False):
                raise
            value = raw  # not YAML: the text as typed (`--set model=a: b` is a string)
        if isinstance(value, str) and value.lower() in ("nan", ".nan", "inf", "-inf", ".inf", "-.inf"):
            value = float(value.lstrip("."))
        if "." in key and key.split(".", 1)[0] == "rewards":
            out.setdefault("rewards", {})[key.split(".", 1)[1]] = value
        elif key.startswith("reward_options.") and key.count(".") == 2:  # reward_options.NAME.OPTION=value
            _, name, option = key.split(".")
            out.setdefault("reward_options", {}).setdefault(name, {})[option] = value
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[Any, Any], over: dict[str, Any]) -> dict[Any, Any]:
    """``data`` with parsed overrides on top. reward_options merge option by option
    (``--set reward_options.pickscore.batch_size=8`` keeps the file's path)."""
    data = dict(data)
    base_opts, new_opts = data.get("reward_options"), over.get("reward_options")
    if isinstance(base_opts, dict) and isinstance(new_opts, dict):
        merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base_opts.items()}
        for name, opts in new_opts.items():
            if isinstance(opts, dict) and isinstance(merged.get(name), dict):
                merged[name].update(opts)
            else:
                merged[name] = opts
        over = {**over, "reward_options": merged}
    data.update(over)
    return data

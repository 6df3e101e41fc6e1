"""Errors of a run configuration: :class:`ConfigError` (what every way in raises, one
(field, message) pair per problem) and the translation of pydantic's errors into such pairs,
bounded so that a hostile file gets a short answer: a shown value is cut before it is formatted,
a field reports at most a few errors, and a config at most :data:`MAX_ERRORS`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

MAX_ERRORS = 20  # thousands of bad entries get a short answer, not thousands of lines
MAX_ERRORS_PER_FIELD = 3


def capped(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_ERRORS pairs and one line summing up the rest (as :func:`format_errors` gives)."""
    if len(errors) > MAX_ERRORS + 1:
        return [*errors[:MAX_ERRORS], ("", f"and {len(errors) - MAX_ERRORS} more errors; fix these first")]
    return errors


class ConfigError(ValueError):
    """A run configuration is invalid. ``errors`` lists (field, message) pairs; the string
    form is one line per field, each naming the field."""

    MAX_ERRORS = MAX_ERRORS

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = capped(errors)
        super().__init__("\n".join(f"{f}: {m}" if f else m for f, m in self.errors))

    def by_field(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f, m in self.errors:
            out[f] = f"{out[f]}; {m}" if f in out else m
        return out


class ErrorBundle:
    """Carries several (field, message) pairs out of a pydantic validator."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = capped(errors)

    def __str__(self) -> str:
        return "; ".join(f"{f}: {m}" for f, m in self.errors)


def format_errors(exc: ValidationError, fields: Iterable[str]) -> list[tuple[str, str]]:
    """(field, message) pairs for a pydantic error of a model with ``fields``; a shown value is
    cut BEFORE it is formatted (a huge or deeply nested input is never turned into text whole),
    and a field reports at most a few errors."""
    errors: list[tuple[str, str]] = []
    per_field: dict[str, int] = {}
    skipped = 0
    for err in exc.errors(include_url=False, include_context=True, include_input=True):
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, ValueError) and inner.args and isinstance(inner.args[0], ErrorBundle):
            errors.extend(inner.args[0].errors)
            continue
        loc = ".".join(preview(p, 60) if not isinstance(p, (str, int)) else str(p)[:100]
                       for p in err.get("loc", ()))
        head = loc.split(".", 1)[0]
        per_field[head] = per_field.get(head, 0) + 1
        if per_field[head] > MAX_ERRORS_PER_FIELD:
            continue
        if len(errors) >= MAX_ERRORS:  # 25,000 unknown keys: 20 lines, not 25,000 (nor 2 s of "did you mean")
            skipped += 1
            continue
        typ = err.get("type", "")
        msg = err.get("msg", "invalid value")
        if typ == "extra_forbidden":
            close = closest(head, fields)
            msg = "unknown key" + (f"; did you mean '{close}'?" if close else "")
        elif typ == "literal_error":
            msg = f"{msg}, got {preview(err.get('input'))}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif "input" in err and typ not in ("missing",):
            msg = f"{msg}, got {preview(err['input'])}"
        errors.append((loc, msg))
    for head, n in per_field.items():
        if n > MAX_ERRORS_PER_FIELD and len(errors) < MAX_ERRORS:
            errors.append((head, f"and {n - MAX_ERRORS_PER_FIELD} more errors in this field"))
    if skipped:
        errors.append(("", f"and {skipped} more errors; fix these first"))
    return errors


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be (a typo), else None."""
    hits = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return hits[0] if hits else None


def preview(value: Any, limit: int = 60, _depth: int = 0) -> str:
    """A short text of ``value`` for an error message, built from pieces of at most ``limit``
    characters: never the full repr of a huge string, number or expanded alias tree (a
    5,000-digit int cannot even be turned into text)."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        if _depth >= 2:
            return "[…]" if not isinstance(value, dict) else "{…}"
        items = list(value.items()) if isinstance(value, dict) else list(value)
        parts: list[str] = []
        used = 0
        for item in items[:10]:
            text = (f"{preview(item[0], 20, _depth + 1)}: {preview(item[1], 20, _depth + 1)}"
                    if isinstance(value, dict) else preview(item, 20, _depth + 1))
            parts.append(text)
            used += len(text)
            if used > limit:
                break
        more = ", …" if len(parts) < len(items) else ""
        open_, close = ("{", "}") if isinstance(value, dict) else ("[", "]")
        return f"{open_}{', '.join(parts)}{more}{close}"
    return f"a {type(value).__name__}"

"""`Prompt`: a prompt string that carries its metadata (GenEval: tag, include, exclude).

Below everything else in the package, so the set builders and the catalog import it without a cycle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Prompt(str):
    """A prompt with per-prompt metadata (GenEval: tag, include, exclude)."""

    meta: Mapping[str, Any]

    def __new__(cls, text: str, meta: Mapping[str, Any] | None = None) -> Prompt:
        self = super().__new__(cls, text)
        self.meta = dict(meta) if meta else {}
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # str's own pickling would rebuild from the text alone and drop the metadata
        return (Prompt, (str(self), dict(self.meta)))

"""Library log lines that are not the user's business, dropped at process start.

Each filter matches one message of one library logger, so every other warning of that library
still shows. Imports nothing heavy (a logger can be filtered before its library is imported:
``logging.getLogger(name)`` is the object the library's ``get_logger`` returns later).
"""

from __future__ import annotations

import logging

# (logger, a substring of the message, why it is noise)
NOISE: tuple[tuple[str, str], ...] = (
    # transformers 5 without torchvision: it falls back to the PIL image processors, which is
    # exactly what the pipelines' feature extractors need (they are never used for training).
    ("transformers.utils.import_utils", "requires torchvision (not installed)"),
    # diffusers' ``Model.to(dtype)``: "modules ... that should be kept in float32: []" -- the
    # list is empty, so the cast it warns about changes nothing.
    ("diffusers.models.modeling_utils", "that should be kept in float32: []"),
    # kombu with the embedded (filesystem://) broker, which has no host: it says it uses "localhost".
    ("kombu.connection", "No hostname was supplied"),
)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self.fragment not in record.getMessage()
        except Exception:  # a record that cannot format is not ours to judge
            return True


def silence_library_noise() -> None:
    """Install the filters of :data:`NOISE` (idempotent)."""
    for name, fragment in NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessage(fragment))

"""The paper-style results table: one row per metric, the base model's value, this model's, and
this model relative to the base (base = 1.00), as Markdown and JSON. Torch-free."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any


def relative(value: float, base: float) -> float:
    """value / base; NaN when the base is 0 or either is not finite."""
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return math.nan
    return value / base


def table_rows(metrics: Sequence[str], base: Mapping[str, float] | None,
               model: Mapping[str, float]) -> list[dict[str, Any]]:
    """``[{"metric", "base", "model", "relative"}]`` in ``metrics`` order (missing values are NaN)."""
    rows = []
    for m in metrics:
        b = float(base[m]) if base is not None and m in base else math.nan
        v = float(model.get(m, math.nan))
        rows.append({"metric": m, "base": b, "model": v, "relative": relative(v, b)})
    return rows


def _fmt(v: float, digits: int) -> str:
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def markdown(title: str, rows: Sequence[Mapping[str, Any]], *, base_label: str = "base model",
             model_label: str = "this model") -> str:
    """A Markdown table: metric | base | model | relative to base (base = 1.00)."""
    lines = [f"### {title}", "", f"| metric | {base_label} | {model_label} | relative to base (base = 1.00) |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {_fmt(r['base'], 4)} | {_fmt(r['model'], 4)} | {_fmt(r['relative'], 2)} |")
    return "\n".join(lines) + "\n"


def to_json(payload: Mapping[str, Any]) -> str:
    """JSON with NaN written as null (a table may lack a base value)."""
    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(dict(payload)), indent=2, sort_keys=False) + "\n"

"""Shared bits of the pages: formatting of run rows (status badges, progress, ETA, times),
query-parameter parsing, the store import and the actions more than one page offers (stop).
No Gradio components here."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

STATUS_COLORS = {
    "queued": ("#475569", "#f1f5f9"),
    "running": ("#1d4ed8", "#dbeafe"),
    "stopping": ("#b45309", "#fef3c7"),
    "succeeded": ("#047857", "#d1fae5"),
    "failed": ("#b91c1c", "#fee2e2"),
    "cancelled": ("#6b7280", "#f3f4f6"),
    "interrupted": ("#7c3aed", "#ede9fe"),  # a worker shut down; resumes with the next one
    "lost": ("#b91c1c", "#fee2e2"),
}
STATUS_CHOICES = ("queued", "running", "stopping", "succeeded", "failed", "cancelled", "interrupted")


def queries():
    """The store's query module (imported lazily so importing a page stays cheap in tests)."""
    from grpo_guard.store import queries as q

    return q


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def status_badge(status: str, *, stale: bool = False) -> str:
    """A coloured pill; a running run without a recent heartbeat shows as 'lost?'."""
    label = f"{status} · lost?" if stale else status
    fg, bg = STATUS_COLORS["lost" if stale else status] if (stale or status in STATUS_COLORS) else ("#374151", "#f3f4f6")
    return f'<span class="gg-badge" style="color:{fg};background:{bg}">{esc(label)}</span>'


def alarm_badge(onset: int | None) -> str:
    if onset is None:
        return ""
    return (f'<span class="gg-badge gg-alarm" title="gold fell while the proxy still rose (ALGORITHM.md §10)">'
            f"⚠ over-optimization @ {onset}</span>")


def fmt_duration(seconds: float | None) -> str:
    """'3h 05m', '4m 10s', '12s'; '' for None/NaN."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = int(max(0, round(seconds)))
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def fmt_time(dt: datetime | None, *, now: datetime | None = None) -> str:
    """A short local-ish timestamp: 'HH:MM' today, else 'YYYY-MM-DD HH:MM' (UTC)."""
    if dt is None:
        return ""
    now = now or datetime.now(UTC)
    dt = dt.astimezone(UTC) if dt.tzinfo else dt.replace(tzinfo=UTC)
    if dt.date() == now.date():
        return dt.strftime("%H:%M:%S")
    return dt.strftime("%Y-%m-%d %H:%M")


def fmt_float(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}g}"


def progress_html(step: int, total: int, status: str, eta_seconds: float | None) -> str:
    """'12 / 40' with a thin bar and 'ETA 3m 10s' while running."""
    total = max(0, int(total or 0))
    step = max(0, int(step or 0))
    frac = min(1.0, step / total) if total else 0.0
    eta = f' <span class="gg-eta">ETA {fmt_duration(eta_seconds)}</span>' if eta_seconds and status in ("running", "stopping") else ""
    return (f'<div class="gg-progress"><div class="gg-bar"><div style="width:{frac * 100:.1f}%"></div></div>'
            f"<span>{step} / {total}</span>{eta}</div>")


def run_label(run_id: int, name: str) -> str:
    return f"#{run_id} {name}"


def parse_ids(text: str | None) -> list[int]:
    """'3,4, 7' -> [3, 4, 7]; junk is ignored (query parameters come from users)."""
    out: list[int] = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip().lstrip("#")
        if part.isdigit() and int(part) not in out:
            out.append(int(part))
    return out


def parse_int(text: Any, default: int | None = None) -> int | None:
    try:
        return int(str(text).strip().lstrip("#"))
    except (TypeError, ValueError):
        return default


def split_tags(text: str | Iterable[str] | None) -> list[str]:
    if text is None:
        return []
    if not isinstance(text, str):
        return [t for t in (str(x).strip() for x in text) if t]
    return [t for t in (p.strip() for p in text.replace("\n", ",").split(",")) if t]


# ---- actions shared by pages --------------------------------------------------------------
STOP_OUTCOMES = {"cancelled": "was queued or interrupted and is now cancelled (it will not resume by itself)",
                 "stopping": "will checkpoint and stop within a step"}


def stop_run(run_id: int) -> str:
    """Ask the run to stop (the Runs and Run pages' Stop button); the message to show. A run that
    has already ended gets a warning, not a success box."""
    status = queries().request_stop(run_id)
    if status not in STOP_OUTCOMES:
        return f'<div class="gg-warn">Run #{run_id} is {esc(status)}; nothing to stop.</div>'
    return f'<div class="gg-ok">Run #{run_id} {STOP_OUTCOMES[status]}.</div>'


# ---- over-optimization onset per run (cached: it only changes when a new eval lands) --------
_ONSET_CACHE: dict[tuple[int, int | None], int | None] = {}


def run_onset(run_id: int, latest_eval_step: int | None) -> int | None:
    """The run's over-optimization onset (ALGORITHM.md §10), cached per (run, latest eval step)."""
    if latest_eval_step is None:
        return None
    key = (int(run_id), int(latest_eval_step))
    if key not in _ONSET_CACHE:
        from app.figures import ALARM_KEY, GOLD_KEY, PROXY_KEY, onset_of_run

        series = queries().metric_series(run_id, [PROXY_KEY, GOLD_KEY, ALARM_KEY])
        if len(_ONSET_CACHE) > 4096:
            _ONSET_CACHE.clear()
        _ONSET_CACHE[key] = onset_of_run(series)
    return _ONSET_CACHE[key]


# ---- the EMA: when eval still samples the base model ------------------------------------------
def ema_notice(config: dict[str, Any], evaluated_step: int | None = None) -> str | None:
    """RunConfig.ema_notice for a stored config dict (None when it cannot be read)."""
    from grpo_guard.config import ConfigError, RunConfig

    try:
        return RunConfig.from_dict(config).ema_notice(evaluated_step)
    except (ConfigError, ValueError, TypeError):
        return None


def ema_notice_html(config: dict[str, Any], evaluated_step: int | None = None, *, prefix: str = "") -> str:
    note = ema_notice(config, evaluated_step)
    return f'<div class="gg-warn gg-ema-note">{esc(prefix)}{esc(note)}</div>' if note else ""

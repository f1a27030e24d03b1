"""How the CLI shows and reads sizes, durations and tables, the way docker does:
"4.86MB" (decimal units, 3 significant digits), "2 hours ago", columns padded by
3 spaces; sizes given by a user ("10GB", "512m") in docker's binary units,
durations in Go's syntax ("24h", "1h30m", plus "7d")."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Sequence

from lamina.store.errors import StoreError

_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, precision: int = 3) -> str:
    """docker's units.HumanSizeWithPrecision: 1234567 -> "1.23MB"."""
    i = 0
    size = float(size)
    while size >= 1000.0 and i < len(_DECIMAL) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.{precision}g}{_DECIMAL[i]}"


def human_duration(d: timedelta) -> str:
    """docker's units.HumanDuration."""
    seconds = int(d.total_seconds())
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = int(d.total_seconds() / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(d.total_seconds() / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(d.total_seconds() / 3600 / 24 / 365)} years"


def since(created: datetime | None, now: datetime | None = None) -> str:
    if created is None:
        return "N/A"
    now = now or datetime.now(timezone.utc)
    return human_duration(now - created) + " ago"


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)", re.IGNORECASE)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """docker's RAMInBytes: "10GB", "512m", "1.5g", "100" (bytes); binary units."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise StoreError(f"invalid size {text!r} (examples: 512MB, 10GB, 1.5g)")
    return int(float(m.group(1)) * _MULT[m.group(2).lower()])


_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_DUR_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400,
          "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """Go's time.ParseDuration ("24h", "1h30m", "90s") plus days and weeks ("7d")."""
    s = text.strip()
    if s in ("0", ""):
        if s == "0":
            return timedelta(0)
        raise StoreError("invalid duration '' (examples: 24h, 90m, 7d)")
    pos, total = 0, 0.0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_S[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise StoreError(f"invalid duration {text!r} (examples: 24h, 90m, 1h30m, 7d)")
    return timedelta(seconds=total)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, min_width: int = 10,
          padding: int = 3) -> str:
    """Columns as Go's tabwriter(minwidth 10, padding 3) lays them out for docker."""
    cols = len(header)
    widths = []
    for i in range(cols - 1):
        w = max(len(str(r[i])) for r in [header, *rows]) + padding
        widths.append(max(w, min_width))
    lines = []
    for r in [header, *rows]:
        cells = [str(c) for c in r]
        line = "".join(cells[i].ljust(widths[i]) for i in range(cols - 1)) + cells[-1]
        lines.append(line.rstrip())
    return "\n".join(lines)

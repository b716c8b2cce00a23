"""Timestamps of log lines and of since/until parameters (RFC 3339 or durations like ``5m``)."""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$")


def parse_duration(text: str) -> float | None:
    """``1h30m`` -> 5400.0 seconds; None when ``text`` is not a duration."""
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch for an RFC 3339 timestamp (any fraction length), else None."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    day, clock, frac, zone = m.groups()
    tz = "+00:00" if zone in ("Z", "z") else zone
    try:
        base = datetime.fromisoformat(f"{day}T{clock}{tz}")
    except ValueError:
        return None
    return int(base.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def parse_bound(text: str, now: float | None = None) -> int | None:
    """A since/until value as epoch nanoseconds: RFC 3339, or a duration meaning that long ago.

    Raises ValueError when ``text`` is neither.
    """
    if not text:
        return None
    ns = parse_rfc3339_ns(text)
    if ns is not None:
        return ns
    d = parse_duration(text)
    if d is None:
        raise ValueError(f"{text!r} is neither an RFC 3339 timestamp nor a duration like 5m")
    return int(((time.time() if now is None else now) - d) * 1e9)


def format_ns(ns: int) -> str:
    """Epoch nanoseconds -> ``2026-11-23T18:45:00.123456789Z`` (fixed width, sorts as text)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(prefix: str) -> int | None:
    try:
        return int(datetime.fromisoformat(prefix + "+00:00").timestamp())
    except ValueError:
        return None


def line_ns(ts: str) -> int:
    """Sort key of a line timestamp; unparsable ones sort first rather than failing the read."""
    # Fast path for the shim's fixed format: lines arrive by the thousand per second.
    if len(ts) == 30 and ts[19] == "." and ts[29] == "Z":
        secs = _epoch_seconds(ts[:19])
        frac = ts[20:29]
        if secs is not None and frac.isdigit():
            return secs * 1_000_000_000 + int(frac)
    return parse_rfc3339_ns(ts) or 0

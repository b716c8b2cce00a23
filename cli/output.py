"""Rendering: aligned tables (plain text, cheap to import), JSON and YAML of proto messages."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

Column = tuple[str, Callable[[Any], str]]
FORMATS = ("table", "wide", "json", "yaml", "name")


def to_dict(msg: Any) -> dict[str, Any]:
    """A proto message as the JSON shape of the API (lowerCamelCase)."""
    from google.protobuf import json_format

    d: dict[str, Any] = json_format.MessageToDict(msg)
    return d


def enum_name(enum_type: Any, value: int, prefix: str) -> str:
    """``SERVICE_STATUS_RUNNING`` -> ``Running``; unknown numbers print as the number."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    short = name.removeprefix(prefix)
    return "".join(p.capitalize() for p in short.split("_")) if short != "UNSPECIFIED" else "-"


def age(ts: str | int | None) -> str:
    """Age of an RFC 3339 string or Unix-seconds timestamp, as ``5s``/``3m``/``2h``/``4d``."""
    if not ts:
        return "-"
    try:
        if isinstance(ts, int):
            then = datetime.fromtimestamp(ts, UTC)
        else:
            then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if then.tzinfo is None:
                then = then.replace(tzinfo=UTC)
    except (ValueError, OSError, OverflowError):
        return "-"
    secs = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def table(rows: Sequence[Sequence[str]], headers: Sequence[str] | None, out: Any = None) -> None:
    """Print left-aligned columns separated by three spaces."""
    out = out or sys.stdout
    all_rows = ([list(headers)] if headers else []) + [list(r) for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    for r in all_rows:
        out.write("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def dump(data: Any, fmt: str, out: Any = None) -> None:
    """Write ``data`` (plain JSON-able values) as JSON or YAML."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def render(
    items: Sequence[Any],
    fmt: str,
    columns: Sequence[Column],
    wide: Sequence[Column] = (),
    no_headers: bool = False,
    list_key: str = "items",
    single: bool = False,
    name_of: Callable[[Any], str] | None = None,
) -> None:
    """Print proto ``items`` in ``fmt`` (table, wide, json, yaml, name)."""
    if fmt in ("json", "yaml"):
        dicts = [to_dict(i) for i in items]
        dump(dicts[0] if single and len(dicts) == 1 else {list_key: dicts}, fmt)
        return
    if fmt == "name":
        for i in items:
            sys.stdout.write((name_of(i) if name_of else str(getattr(i, "name", ""))) + "\n")
        return
    cols = list(columns) + (list(wide) if fmt == "wide" else [])
    rows = [[fn(i) for _, fn in cols] for i in items]
    table(rows, None if no_headers else [h for h, _ in cols])

"""Problem collection for one cast file, and the field checks shared by every resource kind."""

from __future__ import annotations

import difflib
import re
from typing import Any

from rune.cli.castfile.lines import LineDict
from rune.cli.errors import EXIT_INVALID, CliError

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _meant(word: str, known: set[str]) -> str:
    """`` (did you mean "x"?)`` for the known field closest to ``word``, else nothing: worded and
    matched as runed's own suggestions are (difflib's ratio at least 0.6), which this client
    cannot import."""
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


class CastErrors(CliError):
    """Every problem found in the inputs, one per line (``file:line: message``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid cast file:\n  " + "\n  ".join(problems), EXIT_INVALID)
        self.problems = problems


class Problems:
    """Collects problems for one file, so one run reports all of them."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []

    def err(self, line: int, msg: str) -> None:
        self.problems.append(f"{self.filename}:{line}: {msg}")

    def keys(self, d: Any, allowed: set[str], what: str) -> None:
        if not isinstance(d, LineDict):
            return
        for k in d:
            if k not in allowed:
                self.err(d.key_lines.get(k, d.line), f"unknown field '{k}' in {what}{_meant(str(k), allowed)}")

    def line(self, d: Any, key: str) -> int:
        if isinstance(d, LineDict):
            return d.key_lines.get(key, d.line)
        return getattr(d, "line", 0)


def str_map(c: Problems, d: Any, where: str, line: int) -> dict[str, str]:
    """A mapping, or a list of ``{key, value}`` items, as strings."""
    if d is None:
        return {}
    if isinstance(d, dict):
        return {str(k): "" if v is None else str(v) for k, v in d.items()}
    if isinstance(d, list):
        out: dict[str, str] = {}
        for item in d:
            if isinstance(item, dict) and "key" in item:
                out[str(item["key"])] = str(item.get("value", ""))
            else:
                c.err(getattr(item, "line", line), f"{where}: list items need 'key' and 'value'")
        return out
    c.err(line, f"{where} must be a mapping")
    return {}


def integer(c: Problems, v: Any, where: str, line: int, lo: int | None = None, hi: int | None = None) -> int:
    """An integer within ``[lo, hi]`` (0 after reporting a non-integer)."""
    if isinstance(v, bool) or not isinstance(v, int):
        c.err(line, f"{where} must be an integer")
        return 0
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        c.err(line, f"{where} must be between {lo} and {hi}" if hi is not None else f"{where} must be >= {lo}")
    return v


def object_name(c: Problems, spec: LineDict, what: str) -> str:
    """The required DNS-1123 ``name`` of an object."""
    name = spec.get("name")
    if not name or not isinstance(name, str):
        c.err(spec.line, f"{what}: 'name' is required")
        return ""
    if not DNS1123.match(name) or len(name) > 63:
        c.err(c.line(spec, "name"), f"{what} name '{name}' must be lowercase letters, digits and '-' (DNS-1123)")
    return name

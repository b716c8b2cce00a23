"""``rune lint``'s helpers: the source lines around a problem (``--context``, ``--expand-context``), and ``--fix``.

A problem reads ``FILE:LINE: message`` (as the cast parser reports it). ``--fix`` repairs only what cannot change
what the file means: CRLF line ends, tabs in indentation (YAML forbids them), trailing blanks, a missing final
newline. A file is rewritten only when its fixed text parses to the same data as before (or, when the tabs made
it unreadable, when the fixed text reads at all), so a block scalar whose content has trailing blanks is left as is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.*)$", re.S)
# Most lines an --expand-context excerpt shows.
_EXPAND_MAX = 40


def split_problem(problem: str) -> tuple[str, int, str] | None:
    """(file, line, message) of a ``FILE:LINE: message`` problem, else None."""
    m = _PROBLEM.match(problem)
    return (m["file"], int(m["line"]), m["message"]) if m else None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], at: int) -> tuple[int, int]:
    """0-based (first, last) of the YAML block enclosing line index ``at``: its parent and the parent's items."""
    level = _indent(lines[at])
    parents = [i for i in range(at) if lines[i].strip() and _indent(lines[i]) < level]
    first = parents[-1] if parents else at
    base = _indent(lines[first])
    last = at
    while last + 1 < len(lines) and (not lines[last + 1].strip() or _indent(lines[last + 1]) > base):
        last += 1
    while last > at and not lines[last].strip():
        last -= 1
    return first, min(last, first + _EXPAND_MAX - 1)


def excerpt(problem: str, context: int, expand: bool) -> list[str]:
    """The numbered source lines around ``problem``'s line (``>`` marks it); [] when there is nothing to show."""
    where = split_problem(problem)
    if where is None or (context <= 0 and not expand):
        return []
    path = Path(where[0])
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    at = where[1] - 1
    if not 0 <= at < len(lines):
        return []
    first, last = _block(lines, at) if expand else (max(0, at - context), min(len(lines) - 1, at + context))
    width = len(str(last + 1))
    return [f"  {'>' if i == at else ' '} {i + 1:>{width}} | {lines[i]}" for i in range(first, last + 1)]


def _load(text: str) -> tuple[bool, Any]:
    import yaml

    try:
        return True, list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return False, None


def fixed_text(text: str) -> tuple[str, list[str]]:
    """``text`` with CRLFs, indentation tabs, trailing blanks and a missing final newline repaired; what changed."""
    what: list[str] = []
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
        what.append("CRLF line ends")
    lines = text.split("\n")
    untabbed = [re.sub(r"^[ \t]+", lambda m: m[0].replace("\t", "  "), ln) for ln in lines]
    if untabbed != lines:
        what.append("tabs in indentation")
    stripped = [ln.rstrip(" \t") for ln in untabbed]
    if stripped != untabbed:
        what.append("trailing blanks")
    out = "\n".join(stripped)
    if out and not out.endswith("\n"):
        out += "\n"
        what.append("final newline")
    return out, what


def fix_file(path: Path) -> list[str]:
    """Repair ``path`` in place when that keeps its meaning; what was repaired ([] when nothing was)."""
    try:
        text = path.read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return []
    new, what = fixed_text(text)
    if not what:
        return []
    ok_before, before = _load(text)
    ok_after, after = _load(new)
    if not ok_after or (ok_before and before != after):
        return []
    path.write_bytes(new.encode())
    return what

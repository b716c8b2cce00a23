"""Resumable positions in a (possibly merged) log stream: the last seq consumed per instance.

Format: ``v1`` followed by ``;<instance id>=<seq>`` for every instance of the stream, e.g.
``v1;4f1c...=120;9ab2...=98``. Opaque to clients; compact enough for an SSE ``id:``.
"""

from __future__ import annotations

PREFIX = "v1"


def encode(positions: dict[str, int]) -> str:
    if len(positions) == 1:
        # One instance is the common case and is encoded per line: skip the generic join.
        for iid, seq in positions.items():
            return f"{PREFIX};{iid}={seq}"
    return PREFIX + "".join(f";{iid}={seq}" for iid, seq in positions.items())


def prefix_of(key: str) -> str:
    """The cursor of a one-series stream at seq N is this prefix followed by N."""
    return f"{PREFIX};{key}="


def decode(text: str) -> dict[str, int]:
    """Raises ValueError for anything that is not a cursor this server produced."""
    parts = text.split(";")
    if parts[0] != PREFIX:
        raise ValueError("not a log cursor")
    out: dict[str, int] = {}
    for part in parts[1:]:
        iid, sep, seq = part.partition("=")
        if not sep or not iid or not seq.lstrip("-").isdigit():
            raise ValueError("malformed log cursor")
        out[iid] = int(seq)
    return out

"""The configuration as operators may see it: every setting, credentials replaced by a marker.

What counts as a credential is decided by the key's name, not by its current value, so a key
that holds one is redacted whatever it holds (an empty value stays empty: "not set" is useful to
know and gives nothing away). A URL's password is redacted wherever it appears.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runed.core.config.schema import Config

REDACTED = "<redacted>"
# Key names (or their last ``_``-separated words) that hold credentials: passwords, tokens,
# secrets, keys (but not key_file, a path) and whole credential maps (docker registry ``data``).
_SENSITIVE = re.compile(r"(^|_)(password|passphrase|passwd|token|secret|api_key|private_key|credentials?|key)$")
_MAPS_OF_CREDENTIALS = {"data"}
# A rune token seen anywhere (a value nobody expected to hold one).
_TOKEN_VALUE = re.compile(r"rune_[A-Za-z0-9_-]{20,}")


def redacted(cfg: Config) -> dict[str, Any]:
    """``cfg`` as a JSON-able tree (runefile key names), with credentials replaced by ``<redacted>``."""
    tree: dict[str, Any] = _walk(dataclasses.asdict(cfg), "")
    return tree


def _walk(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        if key in _MAPS_OF_CREDENTIALS:
            return {str(k): REDACTED if v else v for k, v in value.items()}
        return {str(k): _walk(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, key) for v in value]
    if isinstance(value, str):
        if value and _SENSITIVE.search(key):
            return REDACTED
        return _TOKEN_VALUE.sub(REDACTED, _url_password(value))
    return value


def _url_password(value: str) -> str:
    """``scheme://user:pass@host/...`` with the password redacted; anything else unchanged."""
    if "://" not in value or "@" not in value:
        return value
    try:
        u = urlsplit(value)
        password = u.password
    except ValueError:
        return value
    if not password:
        return value
    netloc = f"{u.username}:{REDACTED}@{u.hostname}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))

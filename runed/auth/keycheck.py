"""Keys every host sharing a store must hold alike: the token HMAC key and the secrets KEK.

Each host keeps both in its own data dir (``auth.key``, ``kek.b64``) or, for the KEK, in
``RUNE_MASTER_KEY``. A host with a different token key would reject every token issued elsewhere
(and issue tokens nobody else accepts); one with a different KEK could not read the secrets the
others wrote. So the first host to start records a check value of each key in the store, and a
host whose keys do not give the same values refuses to start, naming the key and the fix.

The check values reveal nothing: for the token key an HMAC of a fixed label under the key, for the
KEK its key id (a truncated SHA-256 that every secret record already carries).

Why an object record and not the store's meta table: the first write must be atomic across hosts
(two first starts with different keys must not both win), and ``update`` is the store's atomic
read-modify-write on both backends; ``meta_set`` has no compare.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runed.core.errors import FatalStartError
from runed.store.base import Store

KIND = "keycheck"
NAMESPACE = "system"
NAME = "keys"
AUTH_KEY = "auth_key"
KEK = "kek"
_LABEL = b"rune key check v1: token hmac key"


class KeyMismatch(FatalStartError):
    """This host's keys are not the ones the store's other hosts use (the message says which and how to fix it)."""


@dataclass(frozen=True)
class HostKeys:
    """What this host would check: its token key, its active KEK id (None: no KEK loaded) and where they live."""

    auth_key: bytes
    kek_kid: str | None
    data_dir: Path
    kek_where: str


def auth_check_value(key: bytes) -> str:
    """The token key's check value: an HMAC of a fixed label under the key, never the key."""
    return hmac.new(key, _LABEL, hashlib.sha256).hexdigest()[:32]


def _mine(keys: HostKeys) -> dict[str, str]:
    mine = {AUTH_KEY: auth_check_value(keys.auth_key)}
    if keys.kek_kid:
        mine[KEK] = keys.kek_kid
    return mine


def problems(stored: dict[str, Any] | None, keys: HostKeys) -> list[str]:
    """Why ``keys`` do not match the stored check values (empty: they match, or nothing is stored yet)."""
    if not stored:
        return []
    mine = _mine(keys)
    found = []
    if stored.get(AUTH_KEY) and stored[AUTH_KEY] != mine[AUTH_KEY]:
        found.append(
            f"the token HMAC key {keys.data_dir / 'auth.key'} does not match the one the store's other hosts use "
            f"(check value {mine[AUTH_KEY][:12]}, the store's {str(stored[AUTH_KEY])[:12]}): tokens issued on one "
            f"would be rejected on the other. Copy auth.key from a host that already uses this store into "
            f"{keys.data_dir} (mode 0600), then start again"
        )
    if stored.get(KEK) and KEK in mine and stored[KEK] != mine[KEK]:
        found.append(
            f"the secrets KEK ({keys.kek_where}) does not match the one the store's other hosts use "
            f"(key id {mine[KEK]}, the store's {stored[KEK]}): secrets written on one could not be read on the "
            f"other. Copy kek.b64 (and any kek.b64.*.retired) from a host that already uses this store into "
            f"{keys.data_dir}, or set RUNE_MASTER_KEY to the same key on every host, then start again"
        )
    return found


def mismatches(store: Store, keys: HostKeys) -> list[str]:
    """Read-only: why this host's keys do not match the store (for readiness and validation checks)."""
    rec = store.get(KIND, NAMESPACE, NAME)
    return problems(rec.data if rec else None, keys)


def verify(store: Store, keys: HostKeys) -> None:
    """At start: record the check values if this is the first host (atomically), else compare.

    Raises:
        KeyMismatch: a key differs from the store's; the message names it and how to fix it.
    """
    found: list[str] = []

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        found[:] = problems(cur, keys)
        if found:
            return None
        merged = {**_mine(keys), **(cur or {})}
        return None if merged == cur else merged

    store.update(KIND, NAMESPACE, NAME, mutate)
    if found:
        raise KeyMismatch("; and ".join(found))


def record_kek(store: Store, kid: str) -> None:
    """After a KEK rotation: the new key id is the one every host must hold from now on."""

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if (cur or {}).get(KEK) == kid else {**(cur or {}), KEK: kid}

    store.update(KIND, NAMESPACE, NAME, mutate)

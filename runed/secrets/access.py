"""Stored form of secrets and configmaps, and the read helpers the controller and exec use.

A secret record holds metadata and key names in clear and its values only inside an envelope
(see :mod:`runed.secrets.crypto`); a configmap record holds its data in clear.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from runed.core import errors
from runed.secrets.crypto import CryptoError, Envelope, SecretCrypto
from runed.store.base import Record, Store, iter_all

log = logging.getLogger("runed.secrets")

SECRET_KIND = "secret"
CONFIGMAP_KIND = "configmap"


def secret_record(
    crypto: SecretCrypto,
    namespace: str,
    name: str,
    *,
    type_: str,
    data: dict[str, str],
    version: int,
    created_at: str,
    updated_at: str,
) -> dict[str, Any]:
    """The JSON stored for one secret version: values sealed, everything else in clear."""
    try:
        env = crypto.encrypt(namespace, name, version, data)
    except CryptoError as e:
        # The operator needs the reason (file mode, missing env var); the client only the fact.
        log.error("cannot encrypt secret data: %s", e)
        raise errors.Unavailable("the secret encryption key is not available; see the server log") from None
    return {
        "name": name,
        "namespace": namespace,
        "type": type_,
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
        "keys": sorted(data),
        "enc": env.to_json(),
    }


def decrypt_record(crypto: SecretCrypto, data: dict[str, Any]) -> dict[str, str]:
    """Values of a stored secret record. A failure is logged without values and becomes INTERNAL."""
    ns, name, version = data["namespace"], data["name"], int(data["version"])
    try:
        return crypto.decrypt(ns, name, version, Envelope.from_json(data["enc"]))
    except (CryptoError, KeyError, ValueError) as e:
        log.error('cannot decrypt secret "%s" in namespace "%s" (version %d): %s', name, ns, version, e)
        raise errors.Internal(f'secret "{name}" in namespace "{ns}" cannot be decrypted') from None


def read_secret_data(store: Store, crypto: SecretCrypto, namespace: str, name: str) -> dict[str, str]:
    """Decrypted data of a secret (for env/mount resolution and exec); NOT_FOUND when absent."""
    rec = store.get(SECRET_KIND, namespace, name)
    if rec is None:
        raise errors.not_found("secret", name, namespace)
    return decrypt_record(crypto, rec.data)


def configmap_values(data: dict[str, Any]) -> dict[str, str]:
    """The data of a stored configmap record."""
    return {str(k): str(v) for k, v in data.get("data", {}).items()}


@dataclass
class RewrapResult:
    """What a KEK rotation did."""

    old_kid: str
    new_kid: str
    rewrapped: int
    passes: int
    removed_kids: list[str]


def _rewrap_one(crypto: SecretCrypto, store: Store, rec: Record) -> bool:
    changed = False

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        nonlocal changed
        if cur is None:
            return None
        env = Envelope.from_json(cur["enc"])
        new = crypto.rewrap(cur["namespace"], cur["name"], int(cur["version"]), env)
        if new is None:
            return None
        cur["enc"] = new.to_json()
        changed = True
        return cur

    store.update(SECRET_KIND, rec.namespace, rec.name, mutate)
    return changed


def rewrap_all(store: Store, crypto: SecretCrypto, *, max_passes: int = 10) -> RewrapResult:
    """Install a new KEK and re-wrap every data key under it, without stopping readers.

    Each record is re-wrapped in its own atomic read-modify-write, so a concurrent update is never
    lost. Passes repeat until one finds nothing left under an old key (a writer that loaded the
    old KEK just before the switch may still have used it); only then are retired KEK files whose
    keys no record uses deleted.
    """
    old_kid, new_kid = crypto.begin_rotation() if crypto.source == "file" else ("", crypto.load())
    total = 0
    passes = 0
    while passes < max_passes:
        passes += 1
        n = 0
        for rec in iter_all(store, SECRET_KIND):
            if rec.data.get("enc", {}).get("kid") != new_kid and _rewrap_one(crypto, store, rec):
                n += 1
        total += n
        if n == 0:
            break
        time.sleep(0.05)
    in_use = {str(r.data.get("enc", {}).get("kid")) for r in iter_all(store, SECRET_KIND)}
    removed = crypto.drop_retired(in_use)
    return RewrapResult(old_kid=old_kid, new_kid=new_kid, rewrapped=total, passes=passes, removed_kids=removed)

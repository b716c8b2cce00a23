"""Where a registry's credentials live (a secret) and how they are written, read and recognised.

A registry record keeps only where its credentials are (``from_secret``, default a secret
``registry-<name>`` in namespace ``system`` that runed owns), never the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rune.api import admin_pb2
from runed.api.namespace import ensure_namespace
from runed.api.secret import now_rfc3339
from runed.core import errors
from runed.core.names import SYSTEM_NAMESPACE
from runed.secrets.access import SECRET_KIND, decrypt_record, secret_record
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store

SECRET_NAMESPACE = SYSTEM_NAMESPACE
SECRET_TYPE = "registry"


def inline_credentials(auth: admin_pb2.RegistryAuthConfig) -> dict[str, str]:
    """Credential fields given in the request, as secret data keys."""
    out = dict(auth.data)
    for key in ("username", "password", "token"):
        value = getattr(auth, key)
        if value:
            out[key] = value
    return out


def secret_ref(from_secret: str, name: str) -> tuple[str, str]:
    """``ns/name`` or ``name`` (namespace ``system``); empty means the registry's own secret."""
    if not from_secret:
        return SECRET_NAMESPACE, f"registry-{name}"
    ns, _, sname = from_secret.rpartition("/")
    return ns or SECRET_NAMESPACE, sname


def infer_type(declared: str, keys: Mapping[str, str] | list[str], region: str = "") -> str:
    """Declared type, else token ⇒ token, username+password ⇒ basic, region ⇒ ecr."""
    if declared:
        return declared
    if ".dockerconfigjson" in keys:
        return "dockerconfigjson"
    if "token" in keys:
        return "token"
    if "username" in keys and "password" in keys:
        return "basic"
    if region or "awsAccessKeyId" in keys:
        return "ecr"
    return ""


def store_credentials(
    store: Store, crypto: SecretCrypto, ns: str, sname: str, data: dict[str, str], *, manage: str, immutable: bool
) -> None:
    """Write credentials into their secret per ``manage`` (create | update | ignore)."""
    if manage == "ignore":
        return
    ensure_namespace(store, ns, create=True)

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        now = now_rfc3339()
        if cur is None:
            return secret_record(
                crypto, ns, sname, type_=SECRET_TYPE, data=data, version=1, created_at=now, updated_at=now
            )
        if immutable or manage == "create" or decrypt_record(crypto, cur) == data:
            return None
        return secret_record(
            crypto,
            ns,
            sname,
            type_=cur.get("type", SECRET_TYPE),
            data=data,
            version=int(cur["version"]) + 1,
            created_at=cur.get("created_at", now),
            updated_at=now,
        )

    store.update(SECRET_KIND, ns, sname, mutate)


def resolve_credentials(store: Store, crypto: SecretCrypto, reg: Mapping[str, Any]) -> dict[str, str]:
    """The registry's credentials from its secret; NOT_FOUND when the secret is missing."""
    ns, sname = secret_ref(reg["auth"].get("from_secret", ""), reg["name"])
    rec = store.get(SECRET_KIND, ns, sname)
    if rec is None:
        raise errors.not_found("secret", sname, ns)
    return decrypt_record(crypto, rec.data)

"""Registry records in the store: their wire form (never a credential value) and the one way to save one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rune.api import admin_pb2
from runed.api.registries.credentials import infer_type, inline_credentials, secret_ref, store_credentials
from runed.api.secret import now_rfc3339
from runed.core import errors
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store

KIND = "registry"
# Registries are cluster-scoped: stored under the empty store namespace.
SCOPE = ""


def to_pb(d: Mapping[str, Any]) -> admin_pb2.RegistryConfig:
    """Wire form without any credential value."""
    a = d.get("auth", {})
    return admin_pb2.RegistryConfig(
        name=d["name"],
        registry=d["registry"],
        auth=admin_pb2.RegistryAuthConfig(
            type=a.get("type", ""),
            region=a.get("region", ""),
            from_secret=a.get("from_secret", ""),
            bootstrap=bool(a.get("bootstrap", False)),
            manage=a.get("manage", ""),
            immutable=bool(a.get("immutable", False)),
        ),
    )


def to_record(
    cfg: admin_pb2.RegistryConfig, *, cred_keys: list[str], prev: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The stored form: where the credentials are and their key names, never their values."""
    a = cfg.auth
    now = now_rfc3339()
    prev_auth = (prev or {}).get("auth", {})
    keys = cred_keys or (prev_auth.get("keys", []) if prev_auth.get("from_secret", "") == a.from_secret else [])
    return {
        "name": cfg.name,
        "registry": cfg.registry,
        "auth": {
            "type": infer_type(a.type, keys, a.region),
            "region": a.region,
            "from_secret": a.from_secret,
            "bootstrap": a.bootstrap,
            "manage": a.manage or "create",
            "immutable": a.immutable,
            # Key names only: enough to derive the type and report status without decrypting.
            "keys": sorted(keys),
        },
        "created_at": (prev or {}).get("created_at", now),
        "updated_at": now,
        "last_bootstrap_at": (prev or {}).get("last_bootstrap_at", ""),
        "last_error": (prev or {}).get("last_error", ""),
    }


def get(store: Store, name: str) -> dict[str, Any]:
    """The stored registry, or NOT_FOUND."""
    rec = store.get(KIND, SCOPE, name)
    if rec is None:
        raise errors.not_found("registry", name)
    return rec.data


def save(store: Store, crypto: SecretCrypto, cfg: admin_pb2.RegistryConfig, *, create: bool) -> dict[str, Any]:
    """Add (``create``) or replace a registry; credentials given inline go to its secret, same transaction."""
    creds = inline_credentials(cfg.auth)
    with store.transaction():
        prev = store.get(KIND, SCOPE, cfg.name)
        if create and prev is not None:
            raise errors.already_exists("registry", cfg.name)
        if not create and prev is None:
            raise errors.not_found("registry", cfg.name)
        if creds:
            ns, sname = secret_ref(cfg.auth.from_secret, cfg.name)
            # Credentials given inline always land in the registry's secret (manage governs only
            # secrets that already exist).
            store_credentials(
                store,
                crypto,
                ns,
                sname,
                creds,
                manage="update" if not cfg.auth.from_secret else (cfg.auth.manage or "create"),
                immutable=cfg.auth.immutable and bool(cfg.auth.from_secret),
            )
        data = to_record(cfg, cred_keys=sorted(creds), prev=prev.data if prev else None)
        store.put(KIND, SCOPE, cfg.name, data)
    return data

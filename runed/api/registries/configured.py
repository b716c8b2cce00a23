"""A start-up step: registries declared in the runefile (``docker.registries``) join the store."""

from __future__ import annotations

import contextlib
from typing import Protocol

from rune.api import admin_pb2
from runed.api.registries.checks import v_config
from runed.api.registries.credentials import secret_ref, store_credentials
from runed.api.registries.records import KIND, SCOPE, save
from runed.core import errors
from runed.core.config import Config
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store


class Components(Protocol):
    """What the import needs of its process (the composition root's components, or a call's deps)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def crypto(self) -> SecretCrypto: ...


def import_configured(components: Components) -> None:
    """Registries declared in the runefile (docker.registries) join the store if missing.

    A registry already stored keeps its settings; with ``manage: update`` (and not ``immutable``)
    its credentials secret is refreshed from the runefile. Called at start (every role; losing a
    race to another role is fine) and by BootstrapAuth.
    """
    store = components.store
    for e in components.config.docker.registries:
        if not e.name:
            continue
        a = e.auth
        if store.get(KIND, SCOPE, e.name) is not None:
            creds = {
                **a.data,
                **{k: v for k, v in (("username", a.username), ("password", a.password), ("token", a.token)) if v},
            }
            if creds and a.manage == "update" and not a.immutable:
                ns, sname = secret_ref(a.from_secret, e.name)
                store_credentials(store, components.crypto, ns, sname, creds, manage="update", immutable=False)
            continue
        cfg = admin_pb2.RegistryConfig(
            name=e.name,
            registry=e.registry,
            auth=admin_pb2.RegistryAuthConfig(
                type=a.type,
                username=a.username,
                password=a.password,
                token=a.token,
                region=a.region,
                from_secret=a.from_secret,
                bootstrap=a.bootstrap,
                manage=a.manage,
                immutable=a.immutable,
                data=a.data,
            ),
        )
        vs = v_config(admin_pb2.AddRegistryRequest(registry=cfg))
        if vs:
            raise errors.FailedPrecondition(
                f'docker.registries entry "{e.name}" is invalid: '
                + "; ".join(f"{v.field}: {v.description}" for v in vs),
                reason="REGISTRY_CONFIG_INVALID",
            )
        with contextlib.suppress(errors.AlreadyExists):
            save(store, components.crypto, cfg, create=True)

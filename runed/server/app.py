"""The per-process application object: configuration, store and the components handlers use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runed.core.config import Config
from runed.store.sqlite import SQLiteStore, open_store

if TYPE_CHECKING:
    from runed.auth.authn import Authenticator
    from runed.auth.authz import Authorizer
    from runed.core.errors import RuneError
    from runed.pipeline.context import CallContext
    from runed.pipeline.stages import Pipeline
    from runed.secrets.crypto import CryptoError, SecretCrypto


@dataclass
class App:
    """Built once per role process by :func:`build_app` and passed down; nothing reads globals."""

    config: Config
    store: SQLiteStore
    role: str
    authenticator: Authenticator = field(init=False)
    authorizer: Authorizer = field(init=False)
    pipeline: Pipeline = field(init=False)
    # Envelope encryption of secret values (KEKs load lazily, on first use).
    crypto: SecretCrypto = field(init=False)
    # Called after every call with (ctx, code name, elapsed ms): metrics hook for adapters.
    on_call_finished: Callable[[CallContext, str, float], None] | None = None

    def close(self) -> None:
        self.store.close()


def build_app(config: Config, role: str) -> App:
    from runed.api.namespace import seed_namespaces
    from runed.api.registries import import_configured as import_configured_registries
    from runed.auth.authn import Authenticator
    from runed.auth.authz import Authorizer
    from runed.pipeline.stages import Pipeline, load_routes
    from runed.secrets.crypto import SecretCrypto

    store = open_store(config.data_path, changelog_keep=config.history.changelog_entries)
    app = App(config=config, store=store, role=role)
    app.authenticator = Authenticator(app)
    app.authorizer = Authorizer(app)
    app.pipeline = Pipeline(load_routes())
    app.crypto = SecretCrypto(config)
    try:
        # Creates the KEK on first boot, so secrets are encrypted from the very first write.
        app.crypto.load()
    except CryptoError as e:
        logging.getLogger("runed.crypto").error("secret encryption key unavailable: %s", e)
    seed_namespaces(store)
    try:
        import_configured_registries(app)
    except RuneError as e:
        logging.getLogger("runed.registries").error("docker.registries: %s", e.message)
    return app

"""The composition root: builds one role process's components from the config and runs the start-up steps.

Nothing below this module looks anything up: each component's constructor takes exactly what it
uses, handlers see only :class:`runed.pipeline.context.Deps`, and the roles (``roles.py``) hand each
adapter or the controller its own parts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from runed.api.namespace import seed_namespaces
from runed.api.registries import import_configured
from runed.api.routes import HANDLERS, VALIDATORS
from runed.auth import keycheck, rbac
from runed.auth.authn import Authenticator, IDTokenVerifier
from runed.auth.authz import Authorizer
from runed.auth.identity import Identity, load_server_key
from runed.auth.ratelimit import RateLimiter
from runed.core.config import Config
from runed.core.errors import RuneError
from runed.pipeline.stages import Pipeline, build_routes
from runed.secrets.crypto import ENV_MASTER_KEY, CryptoError, SecretCrypto
from runed.store.base import Store
from runed.store.open import open_configured
from runed.transport import metrics


@dataclass(frozen=True)
class HandlerDeps:
    """What handlers get in every call context (satisfies :class:`runed.pipeline.context.Deps`)."""

    config: Config
    store: Store
    crypto: SecretCrypto
    identity: Identity
    # After an identity change made here: the authenticator drops its cache (and the authorizer's).
    credentials_changed: Callable[[], None]
    rules: Callable[[tuple[str, ...]], tuple[rbac.Rule, ...]]


@dataclass(frozen=True)
class Components:
    """One role process's parts, held by the composition root alone; each role takes what it serves with."""

    config: Config
    store: Store
    crypto: SecretCrypto
    pipeline: Pipeline
    deps: HandlerDeps

    def close(self) -> None:
        self.store.close()


def _oidc_verifier(config: Config) -> IDTokenVerifier | None:
    if not config.auth.oidc.enabled:
        return None
    # Imported only when an issuer is configured: jwt and httpx cost every role ≈0.14 s of start-up.
    from runed.auth.oidc import OIDCVerifier

    return OIDCVerifier(config.auth.oidc, config.data_path)


def build(config: Config) -> Components:
    """Open the store, build the components and run the start-up steps, in this order.

    Raises:
        StoreError: the database cannot be opened or migrated (a fatal start error).
    """
    store = open_configured(config)
    identity = Identity(store, load_server_key(config.data_path))
    authorizer = Authorizer(identity)
    rl = config.auth.rate_limit
    authenticator = Authenticator(
        identity,
        store,
        RateLimiter(rl.requests_per_second, rl.burst),
        oidc=_oidc_verifier(config),
        on_invalidate=authorizer.invalidate,
    )
    # Built-in policies are defined in code and written to the store at every start (idempotent).
    identity.seed_builtin_policies()
    pipeline = Pipeline(
        build_routes(HANDLERS, VALIDATORS),
        authenticator,
        authorizer,
        store.audit,
        on_call_finished=metrics.on_call_finished,
    )
    # Envelope encryption of secret values (KEKs load lazily, on first use).
    crypto = SecretCrypto(config)
    kid: str | None = None
    try:
        # Creates the KEK on first boot, so secrets are encrypted from the very first write.
        kid = crypto.load()
    except CryptoError as e:
        logging.getLogger("runed.crypto").error("secret encryption key unavailable: %s", e)
    # Hosts sharing a store must hold the same keys: a host whose keys differ refuses to start.
    kek_where = str(crypto.path) if crypto.source == "file" else ENV_MASTER_KEY
    keycheck.verify(store, keycheck.HostKeys(identity.key, kid, config.data_path, kek_where))
    deps = HandlerDeps(config, store, crypto, identity, authenticator.invalidate, authorizer.rules)
    # Start-up steps every role runs (idempotent; losing a race to another role is fine).
    seed_namespaces(store)
    try:
        import_configured(deps)
    except RuneError as e:
        logging.getLogger("runed.registries").error("docker.registries: %s", e.message)
    return Components(config, store, crypto, pipeline, deps)

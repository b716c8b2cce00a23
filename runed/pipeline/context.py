"""Per-call context handed to every handler, whatever the transport, and the dependencies it carries."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from runed.auth import rbac
from runed.auth.identity import Identity
from runed.auth.principal import ANONYMOUS, Principal
from runed.auth.ratelimit import Quota
from runed.core.config import Config
from runed.pipeline.methods import Method
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store


class Deps(Protocol):
    """What handlers may use of their process: exactly this, built once by the composition root.

    Handlers never see the pipeline, the adapters or the authenticator itself; the two identity
    hooks below are what the auth and admin handlers need after changing users, tokens or policies.
    """

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def crypto(self) -> SecretCrypto:
        """Envelope encryption of secret values (KEKs load lazily, on first use)."""
        ...

    @property
    def identity(self) -> Identity:
        """Users, tokens and policies, bound to the server key."""
        ...

    def credentials_changed(self) -> None:
        """Drop this process's cached credentials and rules after an identity change made here."""

    def rules(self, policies: tuple[str, ...]) -> tuple[rbac.Rule, ...]:
        """The RBAC rules the named policies grant (as the authorization stage evaluates them)."""
        ...


@dataclass
class CallContext:
    """Everything a stage or handler may know about the call; transports fill it in."""

    deps: Deps
    method: Method
    transport: str  # "grpc" | "rest"
    metadata: dict[str, str]  # lower-cased header/metadata names
    peer: str  # client IP address ("" when unknown, e.g. unix socket)
    request_id: str = ""
    principal: Principal = ANONYMOUS
    # Client certificate subject CN when the connection used verified mutual TLS.
    tls_client_cn: str = ""
    started: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # monotonic seconds
    # Set by the authorization stage: the namespace the call was authorized for.
    namespace: str = ""
    # Set by the authentication stage when the rate limiter is on: the caller's standing once this
    # call was counted (the REST adapter reports it as RateLimit headers).
    quota: Quota | None = None
    # Called by the pipeline once the call is admitted (authenticated, authorized, valid): the REST
    # adapters hold a stream's HTTP status until then, so admission errors get their own status.
    on_admitted: Callable[[], None] | None = None
    # Set by an adapter that encodes JSON in this process (the REST logs endpoint): a handler with a
    # JSON-ready form of its messages may yield that instead (StreamLogs: runed.api.logs_wire.JsonBatch).
    json_ready: bool = False

    def set_quota(self, quota: Quota) -> None:
        self.quota = quota

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


# The current call, for log records emitted deep below the handler.
current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("current_call", default=None)

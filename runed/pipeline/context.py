"""Per-call context handed to every handler, whatever the transport."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runed.pipeline.methods import Method
    from runed.server.app import App


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user with policies, resolved by authentication."""

    subject: str  # user name, e.g. "root"
    subject_id: str = ""
    subject_type: str = "user"
    policies: tuple[str, ...] = ()
    token_id: str = ""
    auth_method: str = "token"  # token | oidc | mtls | none

    @property
    def key(self) -> str:
        """Rate-limit bucket key: one bucket per credential."""
        return self.token_id or f"{self.auth_method}:{self.subject}"


ANONYMOUS = Principal(subject="anonymous", auth_method="none")


@dataclass
class CallContext:
    """Everything a stage or handler may know about the call; transports fill it in."""

    deps: App  # what handlers may use; narrowed to a protocol by the composition work
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

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


# The current call, for log records emitted deep below the handler.
current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("current_call", default=None)

"""Authentication stage: turns the call's credentials into a Principal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runed import errors
from runed.context import CallContext, Principal

if TYPE_CHECKING:
    from runed.app import App


def bearer_token(ctx: CallContext) -> str:
    """The bearer credential from ``authorization`` (scheme case-insensitive), or ""."""
    raw = ctx.metadata.get("authorization", "").strip()
    if not raw:
        return ""
    scheme, _, value = raw.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise errors.Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
    return value.strip()


class Authenticator:
    """Resolves bearer tokens (and, when configured, OIDC tokens and mTLS subjects)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def authenticate(self, ctx: CallContext) -> Principal:
        token = bearer_token(ctx)
        if not token:
            raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        raise errors.Unauthenticated("invalid or expired credentials")

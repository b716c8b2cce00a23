"""Authentication stage: turns the call's credentials into a Principal."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING

from runed.auth.identity import POLICY, TOKEN, USER, Identity, load_server_key
from runed.auth.ratelimit import RateLimiter
from runed.core import errors
from runed.pipeline.context import CallContext, Principal

if TYPE_CHECKING:
    from runed.auth.oidc import OIDCVerifier
    from runed.server.app import App

log = logging.getLogger("runed.authn")

# Bounded so a flood of distinct valid tokens cannot grow memory without limit.
CACHE_MAX = 10_000

# One message for every bad bearer: it must not tell unknown from revoked from expired.
INVALID = "invalid or expired credentials"


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
    """Resolves bearer tokens, OIDC ID tokens (when configured) and mTLS client certificates."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.identity = Identity(app.store, load_server_key(app.config.data_path))
        rl = app.config.auth.rate_limit
        self.limiter = RateLimiter(rl.requests_per_second, rl.burst)
        self.oidc: OIDCVerifier | None = None
        if app.config.auth.oidc.enabled:
            from runed.auth.oidc import OIDCVerifier

            self.oidc = OIDCVerifier(app.config.auth.oidc, app.config.data_path)
        # keyed hash -> (principal, expires_at): valid only while the watcher below runs, which
        # drops it on any token, user or policy change in any process (revocation stays prompt).
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._cache_key = hashlib.sha256(self.identity.key).digest()  # BLAKE2b keys are at most 64 bytes
        self._watcher: asyncio.Task[None] | None = None
        self._watching = False

    def _ensure_watcher(self) -> None:
        if self._watcher is None:
            since = self.app.store.current_revision()
            self._watching = True
            self._watcher = asyncio.get_running_loop().create_task(self._watch(since))

    async def _watch(self, since: int) -> None:
        try:
            async for _ in self.app.store.watch([TOKEN, USER, POLICY], since):
                self.invalidate()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("identity watch failed: credential caching is off")
        finally:
            self._watching = False
            self.invalidate()

    def invalidate(self) -> None:
        """Forget cached credentials and rules (after an identity change here or elsewhere)."""
        self._cache.clear()
        authorizer = getattr(self.app, "authorizer", None)
        if authorizer is not None:
            authorizer.invalidate()

    async def authenticate(self, ctx: CallContext) -> Principal:
        principal = await self._resolve(ctx)
        wait = self.limiter.acquire(principal.key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise errors.ResourceExhausted(
                f"rate limit exceeded for this credential; retry in {retry}s", retry_after=wait
            )
        return principal

    async def _resolve(self, ctx: CallContext) -> Principal:
        token = bearer_token(ctx)
        if token:
            return await self._from_bearer(token)
        if ctx.tls_client_cn:
            return self._from_client_cert(ctx.tls_client_cn)
        raise errors.Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")

    async def _from_bearer(self, token: str) -> Principal:
        self._ensure_watcher()
        # Keyed BLAKE2b (server key) names cache entries: ~4x cheaper than the HMAC-SHA256 the store
        # indexes by, which only a cache miss computes (inside lookup_token).
        key = hashlib.blake2b(token.encode(), key=self._cache_key, digest_size=32).digest()
        hit = self._cache.get(key)
        if hit is not None and self._watching and (not hit[1] or hit[1] > time.time()):
            self.identity.touch(hit[0].token_id)
            return hit[0]
        tok = self.identity.lookup_token(token)
        if tok is not None:
            user = self.identity.get_user_by_id(tok["subject_id"])
            if user is None:
                raise errors.Unauthenticated(INVALID)
            self.identity.touch(tok["id"])
            principal = Principal(
                subject=user["name"],
                subject_id=user["id"],
                policies=tuple(user.get("policies", [])),
                token_id=tok["id"],
                auth_method="token",
            )
            if self._watching:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = (principal, float(tok.get("expires_at") or 0))
            return principal
        if self.oidc is not None and token.count(".") == 2:
            claims = await self.oidc.verify(token)
            return self.oidc.principal(claims, self.identity)
        raise errors.Unauthenticated(INVALID)

    def _from_client_cert(self, cn: str) -> Principal:
        # The adapter only sets the CN after the chain verified against server.tls.client_ca_file.
        user = self.identity.get_user(cn)
        if user is None:
            raise errors.Unauthenticated("client certificate subject is not a known user")
        return Principal(
            subject=user["name"],
            subject_id=user["id"],
            policies=tuple(user.get("policies", [])),
            auth_method="mtls",
        )

"""Authentication stage: turns the call's credentials into a Principal."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from runed.auth.identity import POLICY, TOKEN, USER, Identity
from runed.auth.principal import Principal
from runed.auth.ratelimit import Quota, RateLimiter
from runed.core import errors
from runed.store.base import Store

log = logging.getLogger("runed.authn")

# Bounded so a flood of distinct valid tokens cannot grow memory without limit.
CACHE_MAX = 10_000

# One message for every bad bearer: it must not tell unknown from revoked from expired.
INVALID = "invalid or expired credentials"


class Refused(errors.Unauthenticated):
    """A refused credential, with why and whose it was for the audit log (the client sees only the message).

    ``cause`` is for the audit record; the client's ErrorInfo reason stays UNAUTHENTICATED whatever it is.
    """

    def __init__(self, message: str, cause: str, subject: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.subject = subject


def bearer_token(metadata: Mapping[str, str]) -> str:
    """The bearer credential from ``authorization`` (scheme case-insensitive), or ""."""
    raw = metadata.get("authorization", "").strip()
    if not raw:
        return ""
    scheme, _, value = raw.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Refused("malformed authorization header: expected 'Bearer <token>'", "malformed authorization header")
    return value.strip()


class IDTokenVerifier(Protocol):
    """ID tokens of an external issuer (:class:`runed.auth.oidc.OIDCVerifier`, built only when configured)."""

    async def verify(self, token: str) -> dict[str, Any]: ...

    def principal(self, claims: dict[str, Any], identity: Identity) -> Principal: ...


class Authenticator:
    """Resolves bearer tokens, OIDC ID tokens (when configured) and mTLS client certificates."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        limiter: RateLimiter,
        oidc: IDTokenVerifier | None = None,
        on_invalidate: Callable[[], None] | None = None,
    ) -> None:
        """Args:
        identity: users, tokens and policies (bound to the server key).
        store: watched for identity changes made by any process, to keep the cache honest.
        limiter: per-credential rate limit applied after a credential resolves.
        oidc: verifier of OIDC ID tokens, when an issuer is configured.
        on_invalidate: called whenever cached credentials are dropped (the authorizer's rule cache).
        """
        self.identity = identity
        self.store = store
        self.limiter = limiter
        self.oidc = oidc
        self._on_invalidate = on_invalidate
        # keyed hash -> (principal, expires_at): valid only while the watcher below runs, which
        # drops it on any token, user or policy change in any process (revocation stays prompt).
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._cache_key = hashlib.sha256(self.identity.key).digest()  # BLAKE2b keys are at most 64 bytes
        self._watcher: asyncio.Task[None] | None = None
        self._watching = False
        # Bumped by every invalidation: a look-up that ran across one does not fill the cache.
        self._generation = 0

    def _ensure_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            since = await self.store.run(self.store.current_revision)
            # Credentials cached from here on were read after ``since``: any later change drops them.
            self._watching = True
            async for _ in self.store.watch([TOKEN, USER, POLICY], since):
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
        self._generation += 1
        self._cache.clear()
        if self._on_invalidate is not None:
            self._on_invalidate()

    async def authenticate(
        self, metadata: Mapping[str, str], tls_client_cn: str = "", on_quota: Callable[[Quota], None] | None = None
    ) -> Principal:
        """The caller, from its bearer token, else its verified client certificate's CN; rate limited.

        Args:
            metadata: the call's headers/metadata, names lower-cased.
            tls_client_cn: the subject CN of a client certificate the adapter verified ("" if none).
            on_quota: told the caller's rate-limit standing once the call is counted (refused or not),
                when the limiter is on (the REST adapter's ``RateLimit`` headers).
        """
        principal = await self._resolve(metadata, tls_client_cn)
        wait = self.limiter.acquire(principal.key)
        if on_quota is not None:
            quota = self.limiter.quota(principal.key)
            if quota is not None:
                on_quota(quota)
        if wait > 0:
            raise errors.rate_limited(wait)
        return principal

    async def _resolve(self, metadata: Mapping[str, str], tls_client_cn: str) -> Principal:
        token = bearer_token(metadata)
        if token:
            return await self._from_bearer(token)
        if tls_client_cn:
            return await self.store.run(self._from_client_cert, tls_client_cn)
        raise Refused("missing credentials: send 'authorization: Bearer <token>'", "no credentials")

    async def _from_bearer(self, token: str) -> Principal:
        self._ensure_watcher()
        # Keyed BLAKE2b (server key) names cache entries: ~4x cheaper than the HMAC-SHA256 the store
        # indexes by, which only a cache miss computes (inside lookup_token).
        key = hashlib.blake2b(token.encode(), key=self._cache_key, digest_size=32).digest()
        hit = self._cache.get(key)
        if hit is not None and self._watching and (not hit[1] or hit[1] > time.time()):
            if self.identity.touch_due(hit[0].token_id):
                await self.store.run(self.identity.touch, hit[0].token_id)
            return hit[0]
        # A cache miss reads the store (and may record the token's use): one unit off the event loop.
        generation = self._generation if self._watching else -1
        found = await self.store.run(self._from_store, token)
        if found is not None:
            principal, expires_at = found
            if self._watching and generation == self._generation:
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = (principal, expires_at)
            return principal
        if self.oidc is not None and token.count(".") == 2:
            try:
                claims = await self.oidc.verify(token)
            except errors.Unauthenticated as e:
                raise Refused(e.message, "OIDC ID token refused (signature, issuer, audience or expiry)") from None
            return self.oidc.principal(claims, self.identity)
        # Only failures pay for this second look-up: it tells the audit log unknown from revoked from expired.
        reason, rec = await self.store.run(self.identity.refusal, token)
        raise Refused(INVALID, reason, str((rec or {}).get("subject_name", "")))

    def _from_store(self, token: str) -> tuple[Principal, float] | None:
        """The principal of a stored token and when it expires (0: never), or None for no such live token."""
        tok = self.identity.lookup_token(token)
        if tok is not None:
            user = self.identity.get_user_by_id(tok["subject_id"])
            if user is None:
                raise Refused(
                    INVALID, f"token {tok['id']} of a user that no longer exists", tok.get("subject_name", "")
                )
            self.identity.touch(tok["id"])
            principal = Principal(
                subject=user["name"],
                subject_id=user["id"],
                policies=tuple(user.get("policies", [])),
                scope=tuple(tok.get("policies") or ()),
                token_id=tok["id"],
                auth_method="token",
            )
            return principal, float(tok.get("expires_at") or 0)
        return None

    def _from_client_cert(self, cn: str) -> Principal:
        # The adapter only sets the CN after the chain verified against server.tls.client_ca_file.
        user = self.identity.get_user(cn)
        if user is None:
            raise Refused("client certificate subject is not a known user", "client certificate of an unknown user")
        return Principal(
            subject=user["name"],
            subject_id=user["id"],
            policies=tuple(user.get("policies", [])),
            auth_method="mtls",
        )

"""OIDC ID tokens as bearer credentials: signature (JWKS), issuer, audience, expiry, claim mapping."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt

from runed.auth.identity import Identity
from runed.auth.principal import Principal
from runed.core import errors
from runed.core.config import OIDCConfig

# Skew beyond this is a misconfiguration, not clock drift.
MAX_SKEW_SECONDS = 300
JWKS_TTL_SECONDS = 300.0
# A token naming an unknown key may mean the issuer rotated: refetch, but not more often than this.
JWKS_MIN_REFRESH_SECONDS = 30.0
INVALID = "invalid or expired credentials"


class OIDCVerifier:
    """Verifies ID tokens from one configured issuer and maps their claims to a Principal."""

    def __init__(self, cfg: OIDCConfig, data_dir: Path) -> None:
        self.cfg = cfg
        self.leeway = min(max(cfg.clock_skew_seconds, 0), MAX_SKEW_SECONDS)
        path = Path(cfg.jwks_file) if cfg.jwks_file else None
        self.jwks_path = path if path is None or path.is_absolute() else data_dir / path
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def _load_keys(self, force: bool = False) -> dict[str, jwt.PyJWK]:
        now = time.monotonic()
        fresh = now - self._fetched < (JWKS_MIN_REFRESH_SECONDS if force else JWKS_TTL_SECONDS)
        if self._keys and fresh:
            return self._keys
        async with self._lock:
            if self.jwks_path is not None:
                raw: Any = json.loads(self.jwks_path.read_text())
            else:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    resp = await client.get(self.cfg.jwks_url)
                    resp.raise_for_status()
                    raw = resp.json()
            keys: dict[str, jwt.PyJWK] = {}
            for i, jwk in enumerate(raw.get("keys", [])):
                try:
                    k = jwt.PyJWK(jwk)
                except jwt.PyJWTError:
                    continue  # keys of types we do not accept are ignored, not fatal
                keys[str(jwk.get("kid") or f"#{i}")] = k
            self._keys = keys
            self._fetched = time.monotonic()
        return self._keys

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        for force in (False, True):
            try:
                keys = await self._load_keys(force)
            except (OSError, ValueError, httpx.HTTPError):
                raise errors.Unavailable("the OIDC issuer's signing keys cannot be loaded") from None
            if kid is None and len(keys) == 1:
                return next(iter(keys.values()))
            if kid is not None and kid in keys:
                return keys[kid]
        raise errors.Unauthenticated(INVALID)

    async def verify(self, token: str) -> dict[str, Any]:
        """The verified claims, or UNAUTHENTICATED (the reason stays in the server log only)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise errors.Unauthenticated(INVALID) from None
        if header.get("alg") not in self.cfg.algorithms:
            raise errors.Unauthenticated(INVALID)
        key = await self._key_for(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=list(self.cfg.algorithms),
                audience=self.cfg.audience or None,
                issuer=self.cfg.issuer or None,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud"] if self.cfg.audience else ["exp", "iat", "iss"]},
            )
        except jwt.PyJWTError:
            raise errors.Unauthenticated(INVALID) from None
        return claims

    def principal(self, claims: dict[str, Any], identity: Identity) -> Principal:
        """Policies come only from the token and the config: an IdP user never inherits a local user's."""
        user = claims.get(self.cfg.user_claim)
        if not isinstance(user, str) or not user:
            raise errors.Unauthenticated(INVALID)
        policies: list[str] = list(self.cfg.default_policies)
        if self.cfg.policies_claim:
            raw = claims.get(self.cfg.policies_claim)
            if isinstance(raw, str):
                raw = raw.replace(",", " ").split()
            if isinstance(raw, list):
                policies += [p for p in raw if isinstance(p, str)]
        return Principal(
            subject=user,
            subject_id=str(claims.get("sub", "")),
            policies=tuple(dict.fromkeys(policies)),
            auth_method="oidc",
        )

"""ASGI layers around the REST app: RateLimit headers on every response, and CORS when configured.

**RateLimit** (the IETF httpapi draft's ``RateLimit`` and ``RateLimit-Policy`` fields). The
per-credential token bucket (``auth.rate_limit``) is described as a quota policy: ``q`` requests
(the burst) per ``w`` seconds (the time the bucket takes to refill from empty, burst / rate), so
``RateLimit-Policy: "credential";q=400;w=2``. Every response carries that policy while the limiter
is on; a response to a call that was counted against a credential also says where that credential
stands afterwards: ``RateLimit: "credential";r=<requests left now>;t=<seconds until the bucket is
full again>``. The standing comes from the pipeline's authentication stage through the call's
context (``CallContext.quota``), which :func:`rune.gateway.http.call_context` leaves in the scope.
A 429 carries ``Retry-After`` besides. Each API process has its own buckets (see
``runed.auth.ratelimit``): these headers describe the REST process's.

**CORS** (``server.cors``): Starlette's ``CORSMiddleware`` outermost, so preflight requests are
answered before routing and every response to an allowed origin names it. Off (not installed)
while ``server.cors.allowed_origins`` is empty.
"""

from __future__ import annotations

import math

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rune.gateway.http import CALL_KEY
from runed.auth.ratelimit import Quota
from runed.core.config import Config, CORSConfig

POLICY_NAME = "credential"
# Set by routes that authenticate outside the pipeline (the /config operations endpoint).
QUOTA_KEY = "rune.quota"


def policy_value(rate: float, burst: int) -> bytes:
    """``RateLimit-Policy`` for a bucket of ``burst`` refilled at ``rate`` per second."""
    size = max(burst, 1)
    window = max(1, math.ceil(size / rate))
    return f'"{POLICY_NAME}";q={size};w={window}'.encode()


def standing_value(quota: Quota) -> bytes:
    """``RateLimit`` for a credential's standing after its call."""
    return f'"{POLICY_NAME}";r={max(quota.remaining, 0)};t={max(0, math.ceil(quota.reset))}'.encode()


class RateLimitHeaders:
    """Adds ``RateLimit-Policy`` to every HTTP response and ``RateLimit`` to those of counted calls."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.policy = policy_value(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"ratelimit-policy", self.policy))
                quota = _quota(scope)
                if quota is not None:
                    headers.append((b"ratelimit", standing_value(quota)))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _quota(scope: Scope) -> Quota | None:
    quota = scope.get(QUOTA_KEY)
    if quota is not None:
        return quota  # type: ignore[no-any-return]
    call = scope.get(CALL_KEY)
    return None if call is None else call.quota  # type: ignore[no-any-return]


def cors(app: ASGIApp, c: CORSConfig) -> ASGIApp:
    """``app`` behind Starlette's CORSMiddleware with the ``server.cors`` settings."""
    return CORSMiddleware(
        app,
        allow_origins=list(c.allowed_origins),
        allow_methods=list(c.allowed_methods),
        allow_headers=list(c.allowed_headers),
        expose_headers=list(c.exposed_headers),
        allow_credentials=c.allow_credentials,
        max_age=c.max_age_seconds,
    )


def wrap(app: ASGIApp, config: Config) -> ASGIApp:
    """The REST app with the layers ``config`` asks for (rate-limit headers, then CORS outermost)."""
    rl = config.auth.rate_limit
    if rl.requests_per_second > 0:
        app = RateLimitHeaders(app, rl.requests_per_second, rl.burst)
    if config.server.cors.allowed_origins:
        app = cors(app, config.server.cors)
    return app

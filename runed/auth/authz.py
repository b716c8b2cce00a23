"""Authorization stage: checks the caller's policies against the method's RBAC entry."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from runed.auth import rbac
from runed.auth.identity import Identity
from runed.core import errors
from runed.pipeline.context import CallContext

if TYPE_CHECKING:
    from runed.server.app import App

# Policies change rarely and every call needs them: cache briefly per process.
_POLICY_TTL_SECONDS = 1.0


class Authorizer:
    """Evaluates rbac.TABLE entries against the rules of the principal's policies (deny by default)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.identity: Identity = app.authenticator.identity
        # Built-ins are defined in code and written to the store at every start (idempotent).
        self.identity.seed_builtin_policies()
        self._cache: dict[tuple[str, ...], tuple[float, tuple[rbac.Rule, ...]]] = {}

    def invalidate(self) -> None:
        """Forget cached rules (after a policy or user change made by this process)."""
        self._cache.clear()

    def rules(self, policies: tuple[str, ...]) -> tuple[rbac.Rule, ...]:
        now = time.monotonic()
        hit = self._cache.get(policies)
        if hit is not None and now - hit[0] < _POLICY_TTL_SECONDS:
            return hit[1]
        rules = tuple(
            rbac.Rule(
                str(r.get("resource", "")),
                tuple(str(v) for v in r.get("verbs", [])),
                str(r.get("namespace") or rbac.ALL_NAMESPACES),
            )
            for r in self.identity.rules_of(policies)
        )
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[policies] = (now, rules)
        return rules

    async def authorize(self, ctx: CallContext, access: rbac.Access, request: Message) -> None:
        ns = rbac.namespace_of(access, request)
        ctx.namespace = ns
        if access is rbac.AUTHENTICATED:
            return
        if not rbac.allows(self.rules(ctx.principal.policies), access.resource, access.verb, ns):
            raise errors.PermissionDenied(
                f"permission denied: {ctx.principal.subject} lacks {rbac.describe(access.resource, access.verb, ns)}"
            )

"""Authorization stage: checks the caller's policies against the method's RBAC entry."""

from __future__ import annotations

import time

from google.protobuf.message import Message

from runed.auth import rbac
from runed.auth.identity import Identity
from runed.auth.principal import Principal
from runed.core import errors

# Policies change rarely and every call needs them: cache briefly per process.
_POLICY_TTL_SECONDS = 1.0


class Authorizer:
    """Evaluates rbac.TABLE entries against the rules of the principal's policies and scope (deny by default)."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self._cache: dict[tuple[str, ...], tuple[float, tuple[rbac.Rule, ...]]] = {}

    def invalidate(self) -> None:
        """Forget cached rules (after a policy or user change made by this process)."""
        self._cache.clear()

    def cached(self, principal: Principal) -> bool:
        """Whether :meth:`authorize` can answer for ``principal`` from the cache alone (no store read)."""
        now = time.monotonic()
        for policies in (principal.policies, principal.scope) if principal.scope else (principal.policies,):
            hit = self._cache.get(policies)
            if hit is None or now - hit[0] >= _POLICY_TTL_SECONDS:
                return False
        return True

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

    def check(self, principal: Principal, resource: str, verb: str, namespace: str) -> None:
        """PERMISSION_DENIED unless the user's rules, and the token's scope if it has one, both allow it.

        The effective rights of a scoped token are the intersection of the two: a scope never adds
        to what the user may do, and a user's lost policy is lost to every token at once.
        """
        what = rbac.describe(resource, verb, namespace)
        if not rbac.allows(self.rules(principal.policies), resource, verb, namespace):
            raise errors.permission_denied(
                f"permission denied: {principal.subject} lacks {what}", resource, verb, namespace
            )
        if principal.scope and not rbac.allows(self.rules(principal.scope), resource, verb, namespace):
            raise errors.permission_denied(
                f"permission denied: this token of {principal.subject} is limited to {', '.join(principal.scope)}"
                f" and lacks {what}",
                resource,
                verb,
                namespace,
            )

    def authorize(self, principal: Principal, access: rbac.Access, request: Message) -> str:
        """The namespace the call is authorized for, or PERMISSION_DENIED naming what is missing."""
        ns = rbac.namespace_of(access, request)
        if access is rbac.AUTHENTICATED:
            return ns
        self.check(principal, access.resource, access.verb, ns)
        return ns

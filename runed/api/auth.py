"""AuthService: who am I, and minting and revoking tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.api import auth_pb2
from runed.api.admin import require_policies
from runed.api.offload import offloaded
from runed.auth import rbac
from runed.auth.identity import Identity
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext

# Ten years at most; 0 means no expiry.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
MAX_POLICIES = 64


def _identity(ctx: CallContext) -> Identity:
    ident: Identity = ctx.deps.identity
    return ident


def _validate_create(req: auth_pb2.CreateTokenRequest) -> list[FieldViolation]:
    out = []
    if req.subject_type not in ("", "user"):
        out.append(FieldViolation("subject_type", "only subject type 'user' is supported"))
    if req.ttl_seconds < 0 or req.ttl_seconds > MAX_TTL_SECONDS:
        out.append(FieldViolation("ttl_seconds", f"must be between 0 (no expiry) and {MAX_TTL_SECONDS}"))
    if not (req.name or req.subject_name or req.subject_id):
        out.append(FieldViolation("name", "name, subject_name or subject_id is required"))
    if len(req.name) > 253:
        out.append(FieldViolation("name", "must be at most 253 characters"))
    if len(req.description) > 1024:
        out.append(FieldViolation("description", "must be at most 1024 characters"))
    out += validation.reference(req.subject_id, "subject_id")
    out += validation.reference(req.subject_name, "subject_name")
    if len(req.policies) > MAX_POLICIES:
        out.append(FieldViolation("policies", f"at most {MAX_POLICIES} policies"))
    for i, p in enumerate(req.policies[:MAX_POLICIES]):
        out += validation.reference(p, f"policies[{i}]", allow_empty=False)
    return out


def _validate_revoke(req: auth_pb2.RevokeTokenRequest) -> list[FieldViolation]:
    return validation.reference(req.id, "id", allow_empty=False)


@offloaded
def WhoAmI(req: auth_pb2.WhoAmIRequest, ctx: CallContext) -> auth_pb2.WhoAmIResponse:
    p = ctx.principal
    email = ""
    user = _identity(ctx).get_user(p.subject) if p.auth_method != "oidc" else None
    if user is not None:
        email = user.get("email", "")
    return auth_pb2.WhoAmIResponse(
        subject_id=p.subject_id,
        subject_name=p.subject,
        subject_email=email,
        policies=list(p.policies),
        token_policies=list(p.scope),
        auth_method=p.auth_method,
    )


def _permits(ctx: CallContext, resource: str, verb: str) -> bool:
    """What the authorization stage evaluates: the user's rules, and the token's scope when it has one."""
    p = ctx.principal
    rules = ctx.deps.rules
    if not rbac.allows(rules(p.policies), resource, verb, rbac.CLUSTER):
        return False
    return not p.scope or rbac.allows(rules(p.scope), resource, verb, rbac.CLUSTER)


def _require_admin(ctx: CallContext, verb: str, why: str) -> None:
    """Acting on another subject's credentials is administration, whatever ``tokens:*`` allows."""
    if not _permits(ctx, "admin", verb):
        raise errors.PermissionDenied(f"permission denied: {why} needs {rbac.describe('admin', verb, rbac.CLUSTER)}")


def _find_subject(ident: Identity, req: auth_pb2.CreateTokenRequest) -> dict[str, Any] | None:
    """The existing user a token is for, as upstream finds it: each of subject_id, then subject_name
    (else the token's name), tried as an id and as a name."""
    for key in (req.subject_id, req.subject_name or req.name):
        if key:
            user = ident.get_user_by_id(key) or ident.get_user(key)
            if user is not None:
                return user
    return None


def _covered(ctx: CallContext, have: tuple[str, ...], policy: str) -> bool:
    """Whether the policies ``have`` allow everything ``policy`` allows."""
    if policy in have:
        return True
    outer = ctx.deps.rules(have)
    return all(rbac.covers(outer, r) for r in ctx.deps.rules((policy,)))


def _token_scope(ctx: CallContext, ident: Identity, user: dict[str, Any], requested: list[str]) -> list[str]:
    """The scope of a new token for an existing ``user``: the requested policies, capped.

    Each must exist and be held by the user or covered by the user's rules (a scope only ever
    narrows: INVALID_ARGUMENT otherwise). A scoped token minting for its own user cannot widen its
    own scope either: with no policies the new token inherits it, and a wider one is PERMISSION_DENIED.
    """
    caller = ctx.principal
    own_scope = caller.scope if caller.subject_id == user["id"] else ()
    if not requested:
        return list(own_scope)
    held = tuple(user.get("policies", []))
    invalid: list[FieldViolation] = []
    wider: list[FieldViolation] = []
    for i, name in enumerate(requested):
        path = f"policies[{i}]"
        if ident.get_policy(name) is None:
            invalid.append(FieldViolation(path, f'policy "{name}" does not exist'))
        elif not _covered(ctx, held, name):
            invalid.append(
                FieldViolation(
                    path,
                    f'policy "{name}" grants more than user "{user["name"]}" may do'
                    f" (its policies: {', '.join(held) or 'none'})",
                )
            )
        elif own_scope and not _covered(ctx, own_scope, name):
            wider.append(
                FieldViolation(
                    path, f'policy "{name}" is wider than the calling token\'s scope ({", ".join(own_scope)})'
                )
            )
    if invalid:
        raise errors.invalid(*validation.bounded(invalid))
    if wider:
        raise errors.PermissionDenied(
            "permission denied: a token cannot mint a token wider than its own scope",
            violations=validation.bounded(wider),
        )
    return list(dict.fromkeys(requested))


@offloaded
def CreateToken(req: auth_pb2.CreateTokenRequest, ctx: CallContext) -> auth_pb2.CreateTokenResponse:
    """Mint a token for an existing user (scoped by ``policies``), or create the user (``policies``, else readonly).

    Anyone allowed ``tokens:create`` may mint tokens for themselves; minting for someone else or
    creating a user (which picks its policies) needs ``admin:create``, or a ``readwrite`` caller
    could mint a root token.
    """
    ident = _identity(ctx)
    user = _find_subject(ident, req)
    scope: list[str] = []
    if user is not None:
        if user["id"] != ctx.principal.subject_id:
            _require_admin(ctx, "create", f'a token for user "{user["name"]}"')
        scope = _token_scope(ctx, ident, user, list(req.policies))
    else:
        if req.subject_id and not req.subject_name:
            raise errors.not_found("user", req.subject_id)
        _require_admin(ctx, "create", "creating a user")
        policies = list(req.policies) or ["readonly"]
        require_policies(ident, req.policies)
        # The token of a user created here carries the user's policies: it needs no scope of its own.
        user = ident.upsert_user(req.subject_name or req.name, policies=policies)
        ctx.deps.credentials_changed()
    issued = ident.issue_token(
        user, req.name, description=req.description, ttl_seconds=int(req.ttl_seconds), policies=scope
    )
    return auth_pb2.CreateTokenResponse(id=issued.id, name=issued.name, secret=issued.secret)


@offloaded
def RevokeToken(req: auth_pb2.RevokeTokenRequest, ctx: CallContext) -> auth_pb2.RevokeTokenResponse:
    ident = _identity(ctx)
    tok = ident.get_token(req.id)
    if tok is None:
        raise errors.not_found("token", req.id)
    if tok.get("subject_id") != ctx.principal.subject_id:
        _require_admin(ctx, "delete", "revoking another user's token")
    ident.revoke_token(req.id)
    ctx.deps.credentials_changed()
    return auth_pb2.RevokeTokenResponse(revoked=True)


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "WhoAmI": None,
    "CreateToken": _validate_create,
    "RevokeToken": _validate_revoke,
}

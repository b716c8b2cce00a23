"""AuthService: who am I, and minting and revoking tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.api import auth_pb2
from runed.auth import rbac
from runed.auth.identity import Identity
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext

# Ten years at most; 0 means no expiry.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


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
    return out


def _validate_revoke(req: auth_pb2.RevokeTokenRequest) -> list[FieldViolation]:
    return validation.reference(req.id, "id", allow_empty=False)


async def WhoAmI(req: auth_pb2.WhoAmIRequest, ctx: CallContext) -> auth_pb2.WhoAmIResponse:
    p = ctx.principal
    email = ""
    user = _identity(ctx).get_user(p.subject) if p.auth_method != "oidc" else None
    if user is not None:
        email = user.get("email", "")
    return auth_pb2.WhoAmIResponse(
        subject_id=p.subject_id, subject_name=p.subject, subject_email=email, policies=list(p.policies)
    )


def _require_admin(ctx: CallContext, verb: str, why: str) -> None:
    """Acting on another subject's credentials is administration, whatever ``tokens:*`` allows."""
    rules = ctx.deps.rules(ctx.principal.policies)
    if not rbac.allows(rules, "admin", verb, rbac.CLUSTER):
        raise errors.PermissionDenied(f"permission denied: {why} needs {rbac.describe('admin', verb, rbac.CLUSTER)}")


async def CreateToken(req: auth_pb2.CreateTokenRequest, ctx: CallContext) -> auth_pb2.CreateTokenResponse:
    """Mint a token for an existing user, or create the user (requested policies, else readonly).

    Anyone allowed ``tokens:create`` may mint tokens for themselves; minting for someone else or
    creating a user (which picks its policies) needs ``admin:create``, or a ``readwrite`` caller
    could mint a root token.
    """
    ident = _identity(ctx)
    user = ident.find_user(req.subject_id, req.subject_name or req.name)
    if user is not None and user["id"] != ctx.principal.subject_id:
        _require_admin(ctx, "create", f'a token for user "{user["name"]}"')
    if user is None:
        if req.subject_id and not req.subject_name:
            raise errors.not_found("user", req.subject_id)
        _require_admin(ctx, "create", "creating a user")
        policies = list(req.policies) or ["readonly"]
        missing = [p for p in policies if ident.get_policy(p) is None]
        if missing:
            raise errors.invalid(
                *validation.bounded([FieldViolation("policies", f'policy "{p}" does not exist') for p in missing])
            )
        user = ident.upsert_user(req.subject_name or req.name, policies=policies)
        ctx.deps.credentials_changed()
    issued = ident.issue_token(user, req.name, description=req.description, ttl_seconds=int(req.ttl_seconds))
    return auth_pb2.CreateTokenResponse(id=issued.id, name=issued.name, secret=issued.secret)


async def RevokeToken(req: auth_pb2.RevokeTokenRequest, ctx: CallContext) -> auth_pb2.RevokeTokenResponse:
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

"""AdminService: bootstrap, policies, users, tokens and the audit log (registry RPCs live in runed/api/registries/)."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from rune.api import admin_pb2
from runed.api.offload import offloaded
from runed.auth import rbac
from runed.auth.identity import BUILTIN_POLICIES, SYSTEM, Identity
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.core.suggest import did_you_mean, meant
from runed.pipeline.context import CallContext

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
KNOWN_KINDS = ("", "user")
DEFAULT_AUDIT_PAGE = 100


def _identity(ctx: CallContext) -> Identity:
    ident: Identity = ctx.deps.identity
    return ident


def _changed(ctx: CallContext) -> None:
    # Other processes learn of the change from the store's change log; this one at once.
    ctx.deps.credentials_changed()


def is_local(peer: str) -> bool:
    """Loopback peers (and unix sockets, where the adapter reports no address) are local."""
    if not peer or peer == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    # An IPv4 client of a dual-stack socket is named ::ffff:127.0.0.1 (not loopback to ipaddress).
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


# -- conversions --------------------------------------------------------------------------------
def policy_pb(p: dict[str, Any]) -> admin_pb2.Policy:
    return admin_pb2.Policy(
        id=p.get("id", ""),
        name=p.get("name", ""),
        description=p.get("description", ""),
        rules=[
            admin_pb2.PolicyRule(resource=r["resource"], verbs=r["verbs"], namespace=r.get("namespace", "*"))
            for r in p.get("rules", [])
        ],
        builtin=bool(p.get("builtin")),
    )


def subject_pb(u: dict[str, Any]) -> admin_pb2.Subject:
    return admin_pb2.Subject(
        id=u["id"], kind="user", name=u["name"], email=u.get("email", ""), policies=u.get("policies", [])
    )


def token_info_pb(t: dict[str, Any]) -> admin_pb2.TokenInfo:
    return admin_pb2.TokenInfo(
        id=t["id"],
        name=t.get("name", ""),
        subject_id=t.get("subject_id", ""),
        subject_type=t.get("subject_type", "user"),
        description=t.get("description", ""),
        issued_at=int(t.get("issued_at") or 0),
        expires_at=int(t.get("expires_at") or 0),
        revoked=bool(t.get("revoked")),
        last_used_at=int(t.get("last_used_at") or 0),
        policies=t.get("policies") or [],
    )


def _rules_of(p: admin_pb2.Policy) -> list[dict[str, Any]]:
    return [{"resource": r.resource, "verbs": list(r.verbs), "namespace": r.namespace or "*"} for r in p.rules]


# -- validation ---------------------------------------------------------------------------------
def _name_violations(path: str, name: str) -> list[FieldViolation]:
    if not name:
        return [FieldViolation(path, "is required")]
    if len(name) > 63 or not DNS1123.match(name):
        return [FieldViolation(path, "must be a DNS-1123 label (lower-case letters, digits, '-'; at most 63)")]
    return []


def _policy_violations(p: admin_pb2.Policy, path: str = "policy") -> list[FieldViolation]:
    out = _name_violations(f"{path}.name", p.name)
    if not p.rules:
        out.append(FieldViolation(f"{path}.rules", "at least one rule is required"))
    for i, r in enumerate(p.rules):
        if not r.resource:
            out.append(FieldViolation(f"{path}.rules[{i}].resource", "is required (use * for every resource)"))
        elif r.resource not in rbac.RESOURCES:
            out.append(FieldViolation(f"{path}.rules[{i}].resource", _unknown("resource", r.resource, rbac.RESOURCES)))
        if not r.verbs:
            out.append(FieldViolation(f"{path}.rules[{i}].verbs", "at least one verb is required"))
        for j, v in enumerate(r.verbs):
            if not v or not (v == "*" or v.isidentifier()):
                out.append(FieldViolation(f"{path}.rules[{i}].verbs[{j}]", f"invalid verb {v!r}"))
            elif v not in rbac.VERBS:
                out.append(FieldViolation(f"{path}.rules[{i}].verbs[{j}]", _unknown("verb", v, rbac.VERBS)))
        if r.namespace and r.namespace != "*" and not DNS1123.match(r.namespace):
            out.append(FieldViolation(f"{path}.rules[{i}].namespace", "must be * or a namespace name"))
    return out


def _unknown(what: str, word: str, known: frozenset[str]) -> str:
    """Why ``word`` is refused: no call needs it, so a rule naming it would grant nothing."""
    near = meant(word, known)
    hint = f" ({did_you_mean(near)})" if near else ""
    return f'unknown {what} "{word}"{hint}: one of {", ".join(sorted(known))}'


def _validate_policy_create(req: admin_pb2.PolicyCreateRequest) -> list[FieldViolation]:
    return _policy_violations(req.policy)


def _validate_policy_ref(req: Any) -> list[FieldViolation]:
    if not (req.name or req.id):
        return [FieldViolation("name", "name or id is required")]
    return validation.reference(req.name, "name") + validation.reference(req.id, "id")


def _validate_attach(req: Any) -> list[FieldViolation]:
    out = []
    if not (req.policy_name or req.policy_id):
        out.append(FieldViolation("policy_name", "policy_name or policy_id is required"))
    if not (req.subject_name or req.subject_id):
        out.append(FieldViolation("subject_name", "subject_name or subject_id is required"))
    if req.subject_kind not in KNOWN_KINDS:
        out.append(FieldViolation("subject_kind", "only subject kind 'user' is supported"))
    for field in ("policy_name", "policy_id", "subject_name", "subject_id"):
        out += validation.reference(getattr(req, field), field)
    return out


def _validate_user_create(req: admin_pb2.UserCreateRequest) -> list[FieldViolation]:
    out = _name_violations("name", req.name)
    if req.email and ("@" not in req.email or len(req.email) > 254):
        out.append(FieldViolation("email", "must be an email address"))
    for i, p in enumerate(req.policies):
        out += _name_violations(f"policies[{i}]", p)
    return out


def _validate_audit(req: Any) -> list[FieldViolation]:
    out = []
    if req.limit < 0 or req.limit > 1000:
        out.append(FieldViolation("limit", "must be between 0 and 1000"))
    if req.since_id < 0:
        out.append(FieldViolation("since_id", "must not be negative"))
    return out


# -- handlers -----------------------------------------------------------------------------------
@offloaded
def AdminBootstrap(req: admin_pb2.AdminBootstrapRequest, ctx: CallContext) -> admin_pb2.AdminBootstrapResponse:
    if not ctx.deps.config.auth.allow_remote_admin and not is_local(ctx.peer):
        raise errors.PermissionDenied(
            "bootstrap is allowed only from the server host unless auth.allow_remote_admin is true"
        )
    issued = _identity(ctx).bootstrap()
    _changed(ctx)
    return admin_pb2.AdminBootstrapResponse(
        token_id=issued.id, token_secret=issued.secret, subject_id=issued.subject_id
    )


def _find_policy(ident: Identity, name: str, pid: str) -> dict[str, Any]:
    key = name or pid
    p = ident.get_policy(key)
    if p is None and pid:
        p = next((x for x in ident.list_policies() if x.get("id") == pid), None)
    if p is None:
        raise errors.not_found("policy", key)
    return p


@offloaded
def PolicyCreate(req: admin_pb2.PolicyCreateRequest, ctx: CallContext) -> admin_pb2.PolicyCreateResponse:
    """Create, or replace the rules of an existing custom policy (upsert, as the reference does)."""
    name = req.policy.name
    if name in BUILTIN_POLICIES:
        raise errors.FailedPrecondition(f'policy "{name}" is built in and cannot be changed', reason="BUILT_IN")
    new_id = str(uuid.uuid4())

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": (cur or {}).get("id") or new_id,
            "name": name,
            "description": req.policy.description,
            "rules": _rules_of(req.policy),
            "builtin": False,
        }

    rec = ctx.deps.store.update("policy", SYSTEM, name, mutate)
    assert rec is not None
    _changed(ctx)
    return admin_pb2.PolicyCreateResponse(policy=policy_pb(rec.data))


@offloaded
def PolicyUpdate(req: admin_pb2.PolicyUpdateRequest, ctx: CallContext) -> admin_pb2.PolicyUpdateResponse:
    name = req.policy.name
    if name in BUILTIN_POLICIES:
        raise errors.FailedPrecondition(f'policy "{name}" is built in and cannot be changed', reason="BUILT_IN")

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any]:
        if cur is None:
            raise errors.not_found("policy", name)
        cur.update(description=req.policy.description, rules=_rules_of(req.policy), builtin=False)
        return cur

    rec = ctx.deps.store.update("policy", SYSTEM, name, mutate)
    assert rec is not None
    _changed(ctx)
    return admin_pb2.PolicyUpdateResponse(policy=policy_pb(rec.data))


@offloaded
def PolicyDelete(req: admin_pb2.PolicyDeleteRequest, ctx: CallContext) -> admin_pb2.PolicyDeleteResponse:
    ident = _identity(ctx)
    p = _find_policy(ident, req.name, req.id)
    if p.get("builtin") or p["name"] in BUILTIN_POLICIES:
        raise errors.FailedPrecondition(f'policy "{p["name"]}" is built in and cannot be deleted', reason="BUILT_IN")
    deleted = ctx.deps.store.delete("policy", SYSTEM, p["name"]) is not None
    _changed(ctx)
    return admin_pb2.PolicyDeleteResponse(deleted=deleted)


@offloaded
def PolicyGet(req: admin_pb2.PolicyGetRequest, ctx: CallContext) -> admin_pb2.PolicyGetResponse:
    return admin_pb2.PolicyGetResponse(policy=policy_pb(_find_policy(_identity(ctx), req.name, req.id)))


@offloaded
def PolicyList(req: admin_pb2.PolicyListRequest, ctx: CallContext) -> admin_pb2.PolicyListResponse:
    return admin_pb2.PolicyListResponse(policies=[policy_pb(p) for p in _identity(ctx).list_policies()])


def _subject(ident: Identity, subject_id: str, subject_name: str) -> dict[str, Any]:
    u = ident.find_user(subject_id, subject_name)
    if u is None:
        raise errors.not_found("user", subject_name or subject_id)
    return u


@offloaded
def PolicyAttachToSubject(
    req: admin_pb2.PolicyAttachToSubjectRequest, ctx: CallContext
) -> admin_pb2.PolicyAttachToSubjectResponse:
    ident = _identity(ctx)
    policy = _find_policy(ident, req.policy_name, req.policy_id)["name"]
    user = _subject(ident, req.subject_id, req.subject_name)
    ident.set_user_policies(user["name"], lambda ps: list(dict.fromkeys([*ps, policy])))
    _changed(ctx)
    return admin_pb2.PolicyAttachToSubjectResponse(attached=True)


@offloaded
def PolicyDetachFromSubject(
    req: admin_pb2.PolicyDetachFromSubjectRequest, ctx: CallContext
) -> admin_pb2.PolicyDetachFromSubjectResponse:
    ident = _identity(ctx)
    policy = req.policy_name or _find_policy(ident, "", req.policy_id)["name"]
    user = _subject(ident, req.subject_id, req.subject_name)
    was = policy in user.get("policies", [])
    ident.set_user_policies(user["name"], lambda ps: [p for p in ps if p != policy])
    _changed(ctx)
    return admin_pb2.PolicyDetachFromSubjectResponse(detached=was)


def require_policies(ident: Identity, policies: Iterable[str]) -> None:
    """INVALID_ARGUMENT naming each of ``policies`` (field ``policies[i]``) that does not exist."""
    missing = [
        FieldViolation(f"policies[{i}]", f'policy "{p}" does not exist')
        for i, p in enumerate(policies)
        if ident.get_policy(p) is None
    ]
    if missing:
        raise errors.invalid(*validation.bounded(missing))


@offloaded
def UserCreate(req: admin_pb2.UserCreateRequest, ctx: CallContext) -> admin_pb2.UserCreateResponse:
    ident = _identity(ctx)
    require_policies(ident, req.policies)
    user = ident.upsert_user(req.name, req.email, list(req.policies))
    _changed(ctx)
    return admin_pb2.UserCreateResponse(user=subject_pb(user))


@offloaded
def UserList(req: admin_pb2.UserListRequest, ctx: CallContext) -> admin_pb2.UserListResponse:
    return admin_pb2.UserListResponse(users=[subject_pb(u) for u in _identity(ctx).list_users()])


@offloaded
def TokenList(req: admin_pb2.TokenListRequest, ctx: CallContext) -> admin_pb2.TokenListResponse:
    return admin_pb2.TokenListResponse(tokens=[token_info_pb(t) for t in _identity(ctx).list_tokens()])


@offloaded
def ListAuditEvents(req: admin_pb2.ListAuditEventsRequest, ctx: CallContext) -> admin_pb2.ListAuditEventsResponse:
    limit = req.limit or DEFAULT_AUDIT_PAGE
    # One extra row tells whether there is more without a second query.
    rows = ctx.deps.store.list_audit(since_id=req.since_id, limit=limit + 1, subject=req.subject or None)
    more = len(rows) > limit
    rows = rows[:limit]
    return admin_pb2.ListAuditEventsResponse(
        events=[
            admin_pb2.AuditEvent(
                id=e.id,
                timestamp_ms=int(e.ts * 1000),
                subject=e.subject,
                method=e.method,
                resource=e.resource,
                verb=e.verb,
                namespace=e.namespace,
                name=e.name,
                outcome=e.outcome,
                code=e.code,
                request_id=e.request_id,
                peer=e.peer,
                detail=e.detail,
            )
            for e in rows
        ],
        next_since_id=rows[-1].id if more and rows else 0,
    )


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "AdminBootstrap": None,
    "PolicyCreate": _validate_policy_create,
    "PolicyUpdate": _validate_policy_create,
    "PolicyDelete": _validate_policy_ref,
    "PolicyGet": _validate_policy_ref,
    "PolicyList": None,
    "PolicyAttachToSubject": _validate_attach,
    "PolicyDetachFromSubject": _validate_attach,
    "UserCreate": _validate_user_create,
    "UserList": None,
    "TokenList": None,
    "ListAuditEvents": _validate_audit,
}

"""SecretService: secrets encrypted at rest; values leave the server only through GetSecret."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rune.api import common_pb2, secret_pb2
from runed.api.namespace import ensure_namespace
from runed.api.offload import offloaded
from runed.core import errors, validation
from runed.core.config import LimitsConfig
from runed.core.errors import FieldViolation
from runed.core.names import ALL_NAMESPACES, list_scope
from runed.pipeline.context import CallContext
from runed.secrets.access import SECRET_KIND, decrypt_record, secret_record
from runed.store.base import iter_all

DEFAULT_TYPE = "static"
TYPE_MAX = 128
FIELD_SELECTOR_FIELDS = ("name", "namespace", "type")
_DEFAULT_LIMITS = LimitsConfig()


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- validation -----------------------------------------------------------------------------------
def _v_secret(s: secret_pb2.Secret, path: str, limits: LimitsConfig = _DEFAULT_LIMITS) -> list[FieldViolation]:
    return (
        validation.dns1123_label(s.name, f"{path}.name")
        + validation.dns1123_label(s.namespace, f"{path}.namespace", allow_empty=True)
        + validation.max_length(s.type, f"{path}.type", TYPE_MAX)
        + validation.data_map(
            s.data, f"{path}.data", max_bytes=limits.max_object_bytes, max_key_len=limits.max_key_name_length
        )
    )


def _v_write(req: Any) -> list[FieldViolation]:
    if not req.HasField("secret"):
        return [FieldViolation("secret", "is required")]
    return _v_secret(req.secret, "secret")


def _v_ref(req: Any) -> list[FieldViolation]:
    return validation.dns1123_label(req.name, "name") + validation.dns1123_label(
        req.namespace, "namespace", allow_empty=True
    )


def v_list(req: Any, what: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if req.namespace != ALL_NAMESPACES:
        out += validation.dns1123_label(req.namespace, "namespace", allow_empty=True)
    if req.label_selector:
        out.append(FieldViolation("label_selector", f"{what} carry no labels; use field_selector"))
    out += validation.selector(req.field_selector, "field_selector", FIELD_SELECTOR_FIELDS)
    if req.paging.limit < 0 or req.paging.offset < 0:
        out.append(FieldViolation("paging", "limit and offset must not be negative"))
    return out


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "CreateSecret": _v_write,
    "GetSecret": _v_ref,
    "UpdateSecret": _v_write,
    "DeleteSecret": _v_ref,
    "ListSecrets": lambda req: v_list(req, "secrets"),
}


def check_limits(data: Any, path: str, limits: LimitsConfig) -> None:
    """Re-check data against the configured limits (validators only know the defaults)."""
    if limits != _DEFAULT_LIMITS:
        vs = validation.data_map(data, path, max_bytes=limits.max_object_bytes, max_key_len=limits.max_key_name_length)
        if vs:
            raise errors.invalid(*validation.bounded(vs))


# -- conversion -----------------------------------------------------------------------------------
def to_pb(d: dict[str, Any], data: dict[str, str] | None = None) -> secret_pb2.Secret:
    """The wire form; ``data`` only when the caller may see values (GetSecret)."""
    return secret_pb2.Secret(
        name=d["name"],
        namespace=d["namespace"],
        type=d.get("type", DEFAULT_TYPE),
        data=data or {},
        version=int(d["version"]),
        created_at=d.get("created_at", ""),
        updated_at=d.get("updated_at", ""),
    )


def _ok(d: dict[str, Any], data: dict[str, str] | None = None) -> secret_pb2.SecretResponse:
    return secret_pb2.SecretResponse(secret=to_pb(d, data), status=common_pb2.Status(code=0))


# -- handlers -------------------------------------------------------------------------------------
def write_record(
    ctx: CallContext,
    kind: str,
    ns: str,
    name: str,
    *,
    create: bool,
    ensure_ns: bool,
    unchanged: Callable[[dict[str, Any]], bool],
    record: Callable[[int, str, str], dict[str, Any]],
) -> dict[str, Any]:
    """Create (upsert, as upstream) or update a secret or configmap: ``record(version, created_at, now)``
    builds it; the version moves only when the stored one is not ``unchanged``."""
    app = ctx.deps
    missing = False

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        nonlocal missing
        now = now_rfc3339()
        if cur is None:
            if not create:
                missing = True
                return None
            return record(1, now, now)
        if unchanged(cur):
            return None
        return record(int(cur["version"]) + 1, cur.get("created_at", now), now)

    # The namespace check and the write share one transaction: a concurrent namespace delete
    # cannot leave this object orphaned.
    with app.store.transaction():
        if create:
            ensure_namespace(app.store, ns, create=ensure_ns)
        rec = app.store.update(kind, ns, name, mutate)
    if missing or rec is None:
        raise errors.not_found(kind, name, ns)
    return rec.data


def get_record(ctx: CallContext, kind: str, ns: str, name: str) -> dict[str, Any]:
    """The stored record, or NOT_FOUND."""
    rec = ctx.deps.store.get(kind, ns, name)
    if rec is None:
        raise errors.not_found(kind, name, ns)
    return rec.data


def delete_record(ctx: CallContext, kind: str, ns: str, name: str) -> common_pb2.Status:
    """Delete the record, or NOT_FOUND."""
    if ctx.deps.store.delete(kind, ns, name) is None:
        raise errors.not_found(kind, name, ns)
    return common_pb2.Status(code=0, message=f'{kind} "{name}" deleted')


def _write(ctx: CallContext, s: secret_pb2.Secret, *, create: bool, ensure_ns: bool) -> dict[str, Any]:
    """Create or update; the version moves only when type or data change."""
    app = ctx.deps
    check_limits(s.data, "secret.data", app.config.secret.limits)
    type_ = s.type or DEFAULT_TYPE
    data = dict(s.data)
    return write_record(
        ctx,
        SECRET_KIND,
        s.namespace,
        s.name,
        create=create,
        ensure_ns=ensure_ns,
        unchanged=lambda cur: cur.get("type", DEFAULT_TYPE) == type_ and decrypt_record(app.crypto, cur) == data,
        record=lambda version, created, now: secret_record(
            app.crypto,
            s.namespace,
            s.name,
            type_=type_,
            data=data,
            version=version,
            created_at=created,
            updated_at=now,
        ),
    )


@offloaded
def CreateSecret(req: secret_pb2.CreateSecretRequest, ctx: CallContext) -> secret_pb2.SecretResponse:
    return _ok(_write(ctx, req.secret, create=True, ensure_ns=req.ensure_namespace))


@offloaded
def UpdateSecret(req: secret_pb2.UpdateSecretRequest, ctx: CallContext) -> secret_pb2.SecretResponse:
    return _ok(_write(ctx, req.secret, create=False, ensure_ns=False))


@offloaded
def GetSecret(req: secret_pb2.GetSecretRequest, ctx: CallContext) -> secret_pb2.SecretResponse:
    d = get_record(ctx, SECRET_KIND, req.namespace, req.name)
    return _ok(d, decrypt_record(ctx.deps.crypto, d))


@offloaded
def DeleteSecret(req: secret_pb2.DeleteSecretRequest, ctx: CallContext) -> common_pb2.Status:
    return delete_record(ctx, SECRET_KIND, req.namespace, req.name)


def list_records(ctx: CallContext, kind: str, req: Any) -> list[dict[str, Any]]:
    """Records of ``kind`` matching the request's namespace, field selector and paging."""
    ns = list_scope(req.namespace)
    fields = dict(req.field_selector)
    out = [
        r.data
        for r in iter_all(ctx.deps.store, kind, ns)
        if all(str(r.data.get(k, DEFAULT_TYPE if k == "type" else "")) == v for k, v in fields.items())
    ]
    start = req.paging.offset
    return out[start : start + req.paging.limit] if req.paging.limit else out[start:]


@offloaded
def ListSecrets(req: secret_pb2.ListSecretsRequest, ctx: CallContext) -> secret_pb2.ListSecretsResponse:
    # Values are never listed: ``data`` carries the key names with empty values, so callers see
    # what a secret provides without secrets:read.
    items = []
    for d in list_records(ctx, SECRET_KIND, req):
        s = to_pb(d)
        s.data.update(dict.fromkeys(d.get("keys", []), ""))
        items.append(s)
    return secret_pb2.ListSecretsResponse(secrets=items, status=common_pb2.Status(code=0))

"""NamespaceService: cluster-scoped namespaces, the built-ins, emptiness checks and watch."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from rune.api import common_pb2, namespace_pb2
from runed.api import listing
from runed.api.offload import offloaded
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.core.names import DEFAULT_NAMESPACE, SYSTEM_NAMESPACE
from runed.model import objects
from runed.pipeline.context import CallContext
from runed.store.base import Store
from runed.store.watch import watch

KIND = objects.NAMESPACE
# Namespaces are cluster-scoped: stored under the empty store namespace.
SCOPE = ""
BUILTIN = (DEFAULT_NAMESPACE, SYSTEM_NAMESPACE)
AUTO_CREATED_LABEL = "rune/auto-created"
DESCRIPTION_MAX = 1024
FIELD_SELECTOR_FIELDS = ("name",)

# What a namespace may contain, counted by DeleteNamespace (kind, word used in the message).
CONTENTS: tuple[tuple[str, str], ...] = (
    (objects.SERVICE, "service"),
    (objects.INSTANCE, "instance"),
    (objects.SECRET, "secret"),
    (objects.CONFIGMAP, "configmap"),
)
# Deleted with a forced namespace delete. Instances are left to the controller, which owns the
# processes behind them and reaps instances whose service is gone.
FORCE_DELETED_KINDS = (
    objects.SERVICE,
    objects.SERVICE_REVISION,
    objects.SCALING_OPERATION,
    objects.DELETION_OPERATION,
    objects.INSTANCE_ACTION,
    objects.SECRET,
    objects.CONFIGMAP,
)


def _record(name: str, description: str = "", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "description": description,
        "labels": dict(labels or {}),
        "created_at": now,
        "updated_at": now,
    }


def _create_if_missing(new: dict[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
    """A store.update mutation that creates ``new`` only if nothing is there (races are harmless)."""
    return lambda cur: new if cur is None else None


def seed_namespaces(store: Store) -> None:
    """Create the built-in namespaces if missing (idempotent, safe from several processes)."""
    for name in BUILTIN:
        if store.get(KIND, SCOPE, name) is None:
            store.update(KIND, SCOPE, name, _create_if_missing(_record(name)))


def ensure_namespace(store: Store, namespace: str, *, create: bool) -> None:
    """Make sure ``namespace`` exists: create it (labelled auto-created) or fail FAILED_PRECONDITION."""
    if store.get(KIND, SCOPE, namespace) is not None:
        return
    if not create:
        raise errors.FailedPrecondition(
            f'namespace "{namespace}" does not exist; create it first or set ensure_namespace',
            reason="NAMESPACE_MISSING",
            metadata={"namespace": namespace},
        )
    store.update(KIND, SCOPE, namespace, _create_if_missing(_record(namespace, labels={AUTO_CREATED_LABEL: "true"})))


def to_pb(d: Mapping[str, Any]) -> namespace_pb2.Namespace:
    return namespace_pb2.Namespace(
        id=d.get("id", ""),
        name=d["name"],
        description=d.get("description", ""),
        labels=d.get("labels", {}),
        created_at=int(d.get("created_at", 0)),
        updated_at=int(d.get("updated_at", 0)),
    )


def _matches(d: Mapping[str, Any], label_selector: Mapping[str, str], field_selector: Mapping[str, str]) -> bool:
    labels = d.get("labels", {})
    if any(labels.get(k) != v for k, v in label_selector.items()):
        return False
    return all(d.get(k) == v for k, v in field_selector.items())


# -- validation -----------------------------------------------------------------------------------
def _v_create(req: namespace_pb2.CreateNamespaceRequest) -> list[FieldViolation]:
    if not req.HasField("namespace"):
        return [FieldViolation("namespace", "is required")]
    ns = req.namespace
    return (
        validation.dns1123_label(ns.name, "namespace.name")
        + validation.max_length(ns.description, "namespace.description", DESCRIPTION_MAX)
        + validation.labels(ns.labels, "namespace.labels")
    )


def _v_name(req: Any) -> list[FieldViolation]:
    return validation.dns1123_label(req.name, "name")


def _v_selectors(req: Any) -> list[FieldViolation]:
    return validation.selector(req.label_selector, "label_selector") + validation.selector(
        req.field_selector, "field_selector", FIELD_SELECTOR_FIELDS
    )


def _v_watch(req: namespace_pb2.WatchNamespacesRequest) -> list[FieldViolation]:
    out = _v_selectors(req)
    if req.since_revision < 0:
        out.append(FieldViolation("since_revision", "must not be negative"))
    return out


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "CreateNamespace": _v_create,
    "GetNamespace": _v_name,
    "ListNamespaces": _v_selectors,
    "DeleteNamespace": _v_name,
    "WatchNamespaces": _v_watch,
}


# -- handlers -------------------------------------------------------------------------------------
@offloaded
def CreateNamespace(
    req: namespace_pb2.CreateNamespaceRequest, ctx: CallContext
) -> namespace_pb2.CreateNamespaceResponse:
    ns = req.namespace
    rec = ctx.deps.store.create(KIND, SCOPE, ns.name, _record(ns.name, ns.description, ns.labels))
    return namespace_pb2.CreateNamespaceResponse(namespace=to_pb(rec.data), status=common_pb2.Status(code=0))


@offloaded
def GetNamespace(req: namespace_pb2.GetNamespaceRequest, ctx: CallContext) -> namespace_pb2.GetNamespaceResponse:
    rec = ctx.deps.store.get(KIND, SCOPE, req.name)
    if rec is None:
        raise errors.not_found("namespace", req.name)
    return namespace_pb2.GetNamespaceResponse(namespace=to_pb(rec.data), status=common_pb2.Status(code=0))


@offloaded
def ListNamespaces(req: namespace_pb2.ListNamespacesRequest, ctx: CallContext) -> namespace_pb2.ListNamespacesResponse:
    from runed.store.base import iter_all

    items = [
        to_pb(r.data)
        for r in iter_all(ctx.deps.store, KIND, SCOPE)
        if _matches(r.data, req.label_selector, req.field_selector)
    ]
    return namespace_pb2.ListNamespacesResponse(
        namespaces=items, status=common_pb2.Status(code=0), paging=common_pb2.PagingParams(limit=len(items))
    )


def _contents(store: Store, namespace: str) -> list[str]:
    out = []
    for kind, word in CONTENTS:
        n = store.count(kind, namespace)
        if n:
            out.append(f"{n} {word}{'s' if n != 1 else ''}")
    return out


@offloaded
def DeleteNamespace(
    req: namespace_pb2.DeleteNamespaceRequest, ctx: CallContext
) -> namespace_pb2.DeleteNamespaceResponse:
    store = ctx.deps.store
    if req.name in BUILTIN:
        raise errors.FailedPrecondition(
            f'namespace "{req.name}" is built in and cannot be deleted',
            reason="BUILT_IN",
            metadata={"namespace": req.name},
        )
    if store.get(KIND, SCOPE, req.name) is None:
        if req.ignore_not_found:
            return namespace_pb2.DeleteNamespaceResponse(status=common_pb2.Status(code=0))
        raise errors.not_found("namespace", req.name)
    # One write transaction: nothing can be created in the namespace between the count and the
    # delete (writers in other processes wait for the lock).
    with store.transaction():
        inside = _contents(store, req.name)
        if inside and not req.force:
            raise errors.FailedPrecondition(
                f'namespace "{req.name}" is not empty: it contains {", ".join(inside)}; '
                "delete them first or delete with force",
                reason="NAMESPACE_NOT_EMPTY",
                metadata={"namespace": req.name},
            )
        if req.force:
            for kind in FORCE_DELETED_KINDS:
                for rec in list(store.list(kind, req.name).items):
                    store.delete(kind, req.name, rec.name)
        store.delete(KIND, SCOPE, req.name)
    detail = [f"also deleted: {', '.join(inside)}"] if inside else []
    return namespace_pb2.DeleteNamespaceResponse(status=common_pb2.Status(code=0, message="deleted", details=detail))


async def WatchNamespaces(
    req: namespace_pb2.WatchNamespacesRequest, ctx: CallContext
) -> AsyncIterator[namespace_pb2.WatchNamespacesResponse]:
    labels, fields = dict(req.label_selector), dict(req.field_selector)
    async for ev in watch(ctx.deps.store, [KIND], namespace=SCOPE, since_revision=req.since_revision):
        if _matches(ev.data, labels, fields):
            yield namespace_pb2.WatchNamespacesResponse(
                namespace=to_pb(ev.data), event_type=listing.EVENT_TYPES[ev.op], revision=ev.revision
            )

"""InstanceService: observed instances (written by the controller), lifecycle requests and watches."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from rune.api import common_pb2, instance_pb2
from runed.api import listing
from runed.api.offload import offloaded
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.core.names import list_scope
from runed.model import objects, selectors
from runed.pipeline.context import CallContext
from runed.pipeline.encoded import Encoded
from runed.store import paging, watch
from runed.store.base import Record, Store, iter_all

FIELD_SELECTOR_FIELDS = ("id", "name", "namespace", "service", "status", "node")

# Pages read lately; a page's filters may read the instances' services.
_PAGES = listing.Pages((objects.INSTANCE, objects.SERVICE))
# Instance protos of recent instance revisions: what a page is made of (see listing.Built).
_BUILT: listing.Built[instance_pb2.Instance] = listing.Built(
    lambda rec, _: objects.instance_to_pb(rec), instance_pb2.ListInstancesResponse.INSTANCES_FIELD_NUMBER
)


class _ServiceLabels:
    """Instances carry their service's labels; one lookup per service per call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: dict[tuple[str, str], dict[str, str]] = {}

    def __call__(self, ns: str, service: str) -> dict[str, str]:
        key = (ns, service)
        if key not in self.cache:
            rec = self.store.get(objects.SERVICE, ns, service)
            self.cache[key] = dict(rec.data.get("spec", {}).get("labels", {})) if rec else {}
        return self.cache[key]


def _fields(inst: instance_pb2.Instance) -> dict[str, str]:
    return {
        "id": inst.id,
        "name": inst.name,
        "namespace": inst.namespace,
        "service": inst.service_name,
        "status": objects.INSTANCE_STATUS_NAMES.get(inst.status, "unspecified"),
        "node": inst.node_id,
    }


def _match(
    inst: instance_pb2.Instance,
    rec: Record,
    sel: selectors.Selector,
    labels: _ServiceLabels,
    *,
    service: str = "",
    node: str = "",
    status: int = 0,
) -> bool:
    """Whether the instance passes every filter."""
    if service and service not in (inst.service_name, inst.service_id):
        return False
    if node and inst.node_id != node:
        return False
    if status and inst.status != status:
        return False
    if sel.labels and not all(r.matches(labels(rec.namespace, inst.service_name)) for r in sel.labels):
        return False
    return not sel.fields or all(r.matches({k: v.lower() for k, v in _fields(inst).items()}) for r in sel.fields)


def find_instance(store: Store, ns: str, instance_id: str) -> Record:
    """An instance by id, or by its name (``<service>-<index>``) when no id matches."""
    rec = store.get(objects.INSTANCE, ns, instance_id)
    if rec is not None:
        return rec
    for r in iter_all(store, objects.INSTANCE, ns):
        if r.data.get("instance", {}).get("name") == instance_id:
            return r
    raise errors.not_found("instance", instance_id, ns)


# -- validation -----------------------------------------------------------------------------------
def _v_get(req: Any) -> list[FieldViolation]:
    out = validation.reference(req.id, "id", allow_empty=False)
    if req.namespace:
        out += validation.dns1123_label(req.namespace, "namespace")
    return out


def _v_action(req: instance_pb2.InstanceActionRequest) -> list[FieldViolation]:
    out = _v_get(req)
    if req.timeout_seconds < 0:
        out.append(FieldViolation("timeout_seconds", "must not be negative"))
    return out


def _v_list(req: instance_pb2.ListInstancesRequest) -> list[FieldViolation]:
    out = selectors.check_scope(req, FIELD_SELECTOR_FIELDS) + paging.check(
        req.page_size, req.paging.limit, req.paging.offset
    )
    if req.status not in instance_pb2.InstanceStatus.values():
        out.append(FieldViolation("status", "unknown instance status"))
    return out


def _v_watch(req: instance_pb2.WatchInstancesRequest) -> list[FieldViolation]:
    return selectors.check_watch(req, FIELD_SELECTOR_FIELDS)


# -- handlers -------------------------------------------------------------------------------------
@offloaded
def GetInstance(req: instance_pb2.GetInstanceRequest, ctx: CallContext) -> instance_pb2.InstanceResponse:
    rec = find_instance(ctx.deps.store, req.namespace, req.id)
    return instance_pb2.InstanceResponse(instance=objects.instance_to_pb(rec))


@offloaded
def ListInstances(
    req: instance_pb2.ListInstancesRequest, ctx: CallContext
) -> Encoded[instance_pb2.ListInstancesResponse]:
    """Instances matching service name, node, status and selectors, one page at a time."""
    store = ctx.deps.store
    sel = listing.selector(req)
    labels = _ServiceLabels(store)
    query = listing.query_key(req)
    pr = paging.page_request(
        req.page_size, req.page_token, req.paging.limit, req.paging.offset, req.paging.continuation_token, query
    )
    kept = _BUILT.of(store)
    filtered = bool(req.service_name or req.node_id or req.status or sel.labels or sel.fields)

    def convert(batch: list[Record]) -> Iterable[bytes | None]:
        if not filtered:
            return [kept.framed(r) for r in batch]
        return [
            kept.framed(r)
            if _match(kept.proto(r), r, sel, labels, service=req.service_name, node=req.node_id, status=req.status)
            else None
            for r in batch
        ]

    def read(revision: int) -> paging.Page[bytes]:
        return paging.paginate(
            store, objects.INSTANCE, list_scope(req.namespace), pr, query, convert, kept.known, revision
        )

    page = _PAGES.page(store, (query, pr), read)
    found = common_pb2.Status(message=f"Found {len(page.items)} instances")
    return listing.page_response(instance_pb2.ListInstancesResponse, page, pr, found)


def _request_action(ctx: CallContext, req: instance_pb2.InstanceActionRequest, desired: str, restart: bool) -> Record:
    """Write the ``instance_action`` the controller carries out; the instance must exist."""
    store = ctx.deps.store
    ns = req.namespace
    rec = find_instance(store, ns, req.id)
    timeout = req.timeout_seconds or int(ctx.deps.config.controller.stop_grace_seconds)

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any]:
        seq = int((cur or {}).get("restart_seq", 0)) + (1 if restart else 0)
        data = objects.instance_action_data(desired, restart_seq=seq, timeout_seconds=timeout)
        data["force"] = req.force
        data["requested_by"] = ctx.principal.subject
        return data

    store.update(objects.INSTANCE_ACTION, ns, rec.name, mutate)
    return rec


@offloaded
def StartInstance(req: instance_pb2.InstanceActionRequest, ctx: CallContext) -> instance_pb2.InstanceResponse:
    rec = _request_action(ctx, req, "running", restart=False)
    return instance_pb2.InstanceResponse(
        instance=objects.instance_to_pb(rec), status=common_pb2.Status(message="start requested")
    )


@offloaded
def StopInstance(req: instance_pb2.InstanceActionRequest, ctx: CallContext) -> instance_pb2.InstanceResponse:
    rec = _request_action(ctx, req, "stopped", restart=False)
    return instance_pb2.InstanceResponse(
        instance=objects.instance_to_pb(rec), status=common_pb2.Status(message="stop requested")
    )


@offloaded
def RestartInstance(req: instance_pb2.InstanceActionRequest, ctx: CallContext) -> instance_pb2.InstanceResponse:
    rec = _request_action(ctx, req, "running", restart=True)
    return instance_pb2.InstanceResponse(
        instance=objects.instance_to_pb(rec), status=common_pb2.Status(message="restart requested")
    )


async def WatchInstances(
    req: instance_pb2.WatchInstancesRequest, ctx: CallContext
) -> AsyncIterator[instance_pb2.WatchInstancesResponse]:
    """Snapshot (or resume from ``since_revision``), then every instance change in order."""
    store = ctx.deps.store
    sel = listing.selector(req)
    labels = _ServiceLabels(store)
    service = req.service_name or req.service_id
    async for ev in watch.watch(
        store,
        [objects.INSTANCE],
        namespace=list_scope(req.namespace),
        since_revision=req.since_revision,
        queue_size=ctx.deps.config.history.watch_queue_events,
    ):
        rec = Record(ev.kind, ev.namespace, ev.name, ev.data, ev.revision, 0)
        # The service's labels may need a store read (cached per watch).
        inst = objects.instance_to_pb(rec)
        if not await store.run(_match, inst, rec, sel, labels, service=service):
            continue
        yield instance_pb2.WatchInstancesResponse(
            instance=inst, event_type=listing.EVENT_TYPES[ev.op], revision=ev.revision
        )


VALIDATORS = {
    "GetInstance": _v_get,
    "ListInstances": _v_list,
    "StartInstance": _v_action,
    "StopInstance": _v_action,
    "RestartInstance": _v_action,
    "WatchInstances": _v_watch,
}

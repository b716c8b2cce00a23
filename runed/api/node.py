"""NodeService: the nodes that run instances, what is placed on them, cordon, uncordon, drain and delete.

Nodes register themselves (``runed.controller.node``); here operators read them and set the two
flags the scheduler obeys: ``cordoned`` (nothing new is placed there) and ``draining`` (cordoned,
and its instances move to other nodes, one per service at a time as readiness allows). A node gone
for good is deleted: otherwise its record (NotReady, UNHEALTHY in GetHealth) and the records of the
instances it ran (``Lost: …``, their names running elsewhere) would stay for as long as the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from rune.api import common_pb2, health_pb2, node_pb2
from runed.api import listing
from runed.api.offload import offloaded
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.model import objects
from runed.model.nodes import NODE, PLACEMENT, SCOPE, Node, Placement, Resources, requests_of
from runed.pipeline.context import CallContext
from runed.store.base import DELETED, MODIFIED, Store, iter_all
from runed.store.watch import watch

NODE_ID_MAX = 253


def _resources(r: Resources) -> node_pb2.NodeResources:
    return node_pb2.NodeResources(cpu_millis=r.cpu_millis, memory_bytes=r.memory_bytes)


def placed(store: Store) -> tuple[Counter[str], dict[str, Resources]]:
    """Instance slots and requested resources per node, from every service's placement."""
    count: Counter[str] = Counter()
    used: dict[str, Resources] = {}
    for rec in iter_all(store, PLACEMENT):
        svc = store.get(objects.SERVICE, rec.namespace, rec.name)
        res = objects.service_from_record(svc).resources if svc is not None else None
        want = requests_of(res.cpu.request, res.memory.request) if res is not None else Resources()
        for nid in Placement.from_record(rec.data).slots.values():
            count[nid] += 1
            used[nid] = used.get(nid, Resources()) + want
    return count, used


def to_pb(node: Node, count: Counter[str], used: dict[str, Resources]) -> node_pb2.Node:
    return node_pb2.Node(
        id=node.id,
        address=node.address,
        labels=node.labels,
        status="Ready" if node.ready else "NotReady",
        cordoned=node.cordoned or node.draining,
        draining=node.draining,
        capacity=_resources(node.capacity),
        allocatable=_resources(node.allocatable),
        allocated=_resources(used.get(node.id, Resources())),
        instances=count[node.id],
        last_heartbeat=objects.rfc3339(node.heartbeat_at) if node.heartbeat_at else "",
        version=node.version,
        registered_at=objects.rfc3339(node.registered_at) if node.registered_at else "",
    )


def _get(store: Store, nid: str) -> node_pb2.Node:
    rec = store.get(NODE, SCOPE, nid)
    if rec is None:
        raise errors.not_found("node", nid)
    count, used = placed(store)
    return to_pb(Node.from_record(rec.name, rec.data), count, used)


def _set(store: Store, nid: str, **flags: bool) -> node_pb2.NodeResponse:
    """Set the operator's flags of a node (the other fields are the node's and the scheduler's)."""

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if cur is None else {**cur, **flags}

    if store.update(NODE, SCOPE, nid, mutate) is None:
        raise errors.not_found("node", nid)
    return node_pb2.NodeResponse(node=_get(store, nid), status=common_pb2.Status(code=0))


# -- validation -----------------------------------------------------------------------------------
def _v_id(req: Any) -> list[FieldViolation]:
    return validation.required(req.id, "id") or validation.max_length(req.id, "id", NODE_ID_MAX)


def _v_list(req: node_pb2.ListNodesRequest | node_pb2.WatchNodesRequest) -> list[FieldViolation]:
    return validation.selector(req.label_selector, "label_selector")


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "ListNodes": _v_list,
    "GetNode": _v_id,
    "CordonNode": _v_id,
    "UncordonNode": _v_id,
    "DrainNode": _v_id,
    "DeleteNode": _v_id,
    "WatchNodes": _v_list,
}


def _selected(node: Node, labels: dict[str, str]) -> bool:
    """Whether ``node`` carries every label of a request's ``label_selector``."""
    return all(node.labels.get(k) == v for k, v in labels.items())


# -- handlers -------------------------------------------------------------------------------------
@offloaded
def ListNodes(req: node_pb2.ListNodesRequest, ctx: CallContext) -> node_pb2.ListNodesResponse:
    store = ctx.deps.store
    # Read first: a change after it is in the list or comes to a watch from it, never neither.
    revision = store.current_revision()
    count, used = placed(store)
    nodes = [Node.from_record(r.name, r.data) for r in iter_all(store, NODE, SCOPE)]
    sel = dict(req.label_selector)
    items = [to_pb(n, count, used) for n in nodes if _selected(n, sel)]
    return node_pb2.ListNodesResponse(nodes=items, status=common_pb2.Status(code=0), revision=revision)


@offloaded
def GetNode(req: node_pb2.GetNodeRequest, ctx: CallContext) -> node_pb2.NodeResponse:
    return node_pb2.NodeResponse(node=_get(ctx.deps.store, req.id), status=common_pb2.Status(code=0))


@offloaded
def CordonNode(req: node_pb2.NodeActionRequest, ctx: CallContext) -> node_pb2.NodeResponse:
    return _set(ctx.deps.store, req.id, cordoned=True)


@offloaded
def UncordonNode(req: node_pb2.NodeActionRequest, ctx: CallContext) -> node_pb2.NodeResponse:
    # Uncordoning also ends a drain: the node takes new instances again (moved ones stay moved).
    return _set(ctx.deps.store, req.id, cordoned=False, draining=False)


@offloaded
def DrainNode(req: node_pb2.NodeActionRequest, ctx: CallContext) -> node_pb2.NodeResponse:
    return _set(ctx.deps.store, req.id, cordoned=True, draining=True)


@offloaded
def DeleteNode(req: node_pb2.NodeActionRequest, ctx: CallContext) -> node_pb2.NodeResponse:
    """Remove a node that is not Ready, and its instance records, in one transaction."""
    store = ctx.deps.store
    with store.transaction():
        rec = store.get(NODE, SCOPE, req.id)
        if rec is None:
            raise errors.not_found("node", req.id)
        node = Node.from_record(rec.name, rec.data)
        if node.ready:
            raise errors.FailedPrecondition(
                f'node "{req.id}" is Ready: stop its runed (or drain it first) and delete it once it is NotReady',
                reason="NODE_READY",
                metadata={"node": req.id},
            )
        gone = node_pb2.NodeResponse(node=_get(store, req.id))
        removed = 0
        for inst in list(iter_all(store, objects.INSTANCE)):
            if (inst.data.get("instance") or {}).get("node_id") == req.id:
                store.delete(objects.INSTANCE, inst.namespace, inst.name)
                removed += 1
        store.delete(NODE, SCOPE, req.id)
    gone.status.CopyFrom(common_pb2.Status(code=0, message=f"{removed} instance record(s) removed"))
    return gone


def _shown(node: Node) -> node_pb2.Node:
    """What an event shows of the node's own record: everything but its heartbeat's time (the
    instances and allocated placed on it come from the placements, not from this record)."""
    pb = to_pb(node, Counter(), {})
    pb.ClearField("last_heartbeat")
    return pb


async def WatchNodes(req: node_pb2.WatchNodesRequest, ctx: CallContext) -> AsyncIterator[node_pb2.WatchNodesResponse]:
    """Node changes as they happen; a heartbeat that changes nothing else (every few seconds per
    node) is left out.

    What a change is compared with is what the stream last saw of the node, or, first after
    ``since_revision``, the node as it was at that revision: a resumed watch shows the same events
    as the live one did from there.
    """
    store = ctx.deps.store
    sel = dict(req.label_selector)
    seen: dict[str, node_pb2.Node] = {}
    async for ev in watch(store, [NODE], namespace=SCOPE, since_revision=req.since_revision):
        node = Node.from_record(ev.name, ev.data)
        shown = _shown(node)
        before = seen.pop(ev.name, None)
        if ev.op != DELETED:
            seen[ev.name] = shown
        if ev.op == MODIFIED:
            if before is None and req.since_revision:
                then = await store.run(store.get_at, NODE, SCOPE, ev.name, req.since_revision)
                before = None if then is None else _shown(Node.from_record(then.name, then.data))
            if before == shown:
                continue
        if not _selected(node, sel):
            continue
        count, used = await store.run(placed, store)
        yield node_pb2.WatchNodesResponse(
            node=to_pb(node, count, used), event_type=listing.EVENT_TYPES[ev.op], revision=ev.revision
        )


def health(store: Store, name: str) -> list[health_pb2.ComponentHealth]:
    """GetHealth's ``node`` components of the registered nodes: every one, or the one named."""
    recs = [r for r in iter_all(store, NODE, SCOPE) if not name or r.name == name]
    if name and not recs:
        raise errors.not_found("node", name)
    count, used = placed(store)
    out = []
    for rec in recs:
        n = to_pb(Node.from_record(rec.name, rec.data), count, used)
        if n.status != "Ready":
            status, why = health_pb2.HEALTH_STATUS_UNHEALTHY, "NotReady: no heartbeat within node.not_ready_seconds"
        elif n.cordoned:
            status, why = health_pb2.HEALTH_STATUS_DEGRADED, "draining" if n.draining else "cordoned"
        else:
            status, why = health_pb2.HEALTH_STATUS_HEALTHY, "Ready"
        out.append(
            health_pb2.ComponentHealth(
                component_type="node",
                id=n.id,
                name=n.id,
                status=status,
                message=f"{why}; {n.address}, {n.instances} instances",
                timestamp=n.last_heartbeat,
            )
        )
    return out

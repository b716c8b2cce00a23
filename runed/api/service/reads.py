"""Reads of services: one by name, pages of a list (selectors, keyset pagination) and the watch stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from rune.api import service_pb2
from runed.api import listing
from runed.api.offload import offloaded
from runed.api.service.common import get_service, status_pb, with_status
from runed.core.errors import FieldViolation
from runed.core.names import list_scope
from runed.model import objects, selectors
from runed.pipeline.context import CallContext
from runed.pipeline.encoded import Encoded
from runed.store import paging, watch
from runed.store.base import DELETED, MODIFIED, Record, Store

FIELD_SELECTOR_FIELDS = ("name", "namespace", "status", "runtime")
# Pages read lately: a service's item is its spec and its status.
_PAGES = listing.Pages((objects.SERVICE, objects.SERVICE_STATUS))
# Service protos of recent (service, status) revisions: what a page is made of.
_BUILT = listing.Built(objects.service_from_record, service_pb2.ListServicesResponse.SERVICES_FIELD_NUMBER)


def v_list(req: service_pb2.ListServicesRequest) -> list[FieldViolation]:
    """Validator of ListServices."""
    return selectors.check_scope(req, FIELD_SELECTOR_FIELDS) + paging.check(
        req.page_size, req.paging.limit, req.paging.offset
    )


def v_watch(req: service_pb2.WatchServicesRequest) -> list[FieldViolation]:
    """Validator of WatchServices."""
    return selectors.check_watch(req, FIELD_SELECTOR_FIELDS)


@offloaded
def GetService(req: service_pb2.GetServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    rec = get_service(ctx.deps.store, req.namespace, req.name)
    return service_pb2.ServiceResponse(service=with_status(ctx.deps.store, rec))


def _service_fields(rec: Record, status: Record | None) -> dict[str, str]:
    return {
        "name": rec.name,
        "namespace": rec.namespace,
        "status": objects.status_word(status).lower(),
        "runtime": str(rec.data.get("spec", {}).get("runtime", "") or "container").lower(),
    }


def _statuses(store: Store, batch: list[Record]) -> dict[tuple[str, str], Record]:
    """The ``service_status`` records of a key-ordered batch of services, read as one key range
    (one query instead of one per service); keys the range does not reach are fetched one by one."""
    out: dict[tuple[str, str], Record] = {}
    if not batch:
        return out
    first, last = batch[0], batch[-1]
    head = store.get(objects.SERVICE_STATUS, first.namespace, first.name)
    if head is not None:
        out[(first.namespace, first.name)] = head
    if len(batch) == 1:
        return out
    wanted = {(r.namespace, r.name) for r in batch}
    res = store.list(objects.SERVICE_STATUS, None, after=(first.namespace, first.name), limit=len(batch) + 32)
    reached = (first.namespace, first.name)
    for rec in res.items:
        key = (rec.namespace, rec.name)
        if key > (last.namespace, last.name):
            reached = key
            break
        if key in wanted:
            out[key] = rec
        reached = key
    if res.next_cursor and reached < (last.namespace, last.name):
        # Stray status records filled the range: fetch what it did not cover.
        for r in batch:
            if (r.namespace, r.name) > reached:
                st = store.get(objects.SERVICE_STATUS, r.namespace, r.name)
                if st is not None:
                    out[(r.namespace, r.name)] = st
    return out


def _match_services(store: Store, sel: selectors.Selector, batch: list[Record]) -> list[bytes | None]:
    """Each service's page item (see listing.Built), None for those the selectors reject."""
    kept = _BUILT.of(store)
    if sel.labels:
        batch_labels = [r.data.get("spec", {}).get("labels", {}) for r in batch]
        keep = [all(q.matches(lb) for q in sel.labels) for lb in batch_labels]
    else:
        keep = [True] * len(batch)
    statuses = _statuses(store, [r for r, k in zip(batch, keep, strict=True) if k])
    out: list[bytes | None] = []
    for rec, k in zip(batch, keep, strict=True):
        if not k:
            out.append(None)
            continue
        status = statuses.get((rec.namespace, rec.name))
        if sel.fields and not all(r.matches(_service_fields(rec, status)) for r in sel.fields):
            out.append(None)
            continue
        out.append(kept.framed(rec, status))
    return out


@offloaded
def ListServices(req: service_pb2.ListServicesRequest, ctx: CallContext) -> Encoded[service_pb2.ListServicesResponse]:
    """Services matching the selectors, one page at a time (keyset pagination, opaque tokens)."""
    store = ctx.deps.store
    sel = listing.selector(req)
    query = listing.query_key(req)
    pr = paging.page_request(
        req.page_size,
        req.page_token,
        req.paging.limit,
        req.paging.offset,
        req.paging.continuation_token,
        query,
    )

    def read(revision: int) -> paging.Page[bytes]:
        return paging.paginate(
            store,
            objects.SERVICE,
            list_scope(req.namespace),
            pr,
            query,
            lambda batch: _match_services(store, sel, batch),
            _BUILT.of(store).known,
            revision,
        )

    page = _PAGES.page(store, (query, pr), read)
    found = status_pb(0, f"Found {len(page.items)} services")
    return listing.page_response(service_pb2.ListServicesResponse, page, pr, found)


class _AsOf:
    """Both halves of each service (spec and status) as they were at the event being sent.

    A status change is joined with the spec as it was at that change's revision, and a spec change
    with the status as it was then, never with what is current: a watch resumed from an old
    revision then replays exactly the states a live watch showed. Each half is looked up in the
    change log once (:meth:`Store.get_at`) and then followed along the stream, which carries every
    change of both kinds in order.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: dict[tuple[str, str, str], Record | None] = {}

    def get(self, kind: str, ns: str, name: str, revision: int) -> Record | None:
        key = (kind, ns, name)
        if key not in self.known:
            self.known[key] = self.store.get_at(kind, ns, name, revision)
        return self.known[key]

    def follow(self, kind: str, ns: str, name: str, rec: Record | None) -> None:
        """The stream's latest state of one half; a deleted object is forgotten (the log knows it is gone)."""
        if rec is None:
            self.known.pop((kind, ns, name), None)
        else:
            self.known[(kind, ns, name)] = rec


async def WatchServices(
    req: service_pb2.WatchServicesRequest, ctx: CallContext
) -> AsyncIterator[service_pb2.WatchServicesResponse]:
    """Snapshot (or resume from ``since_revision``), then every change in order; see runed/store/watch.py.

    Every event shows the service as it was at its revision (see :class:`_AsOf`).
    """
    store = ctx.deps.store
    sel = listing.selector(req)
    as_of = _AsOf(store)
    async for ev in watch.watch(
        store,
        [objects.SERVICE, objects.SERVICE_STATUS],
        namespace=list_scope(req.namespace),
        since_revision=req.since_revision,
        snapshot_kinds=[objects.SERVICE],
        queue_size=ctx.deps.config.history.watch_queue_events,
    ):
        op = ev.op
        rec = None if op == DELETED else Record(ev.kind, ev.namespace, ev.name, ev.data, ev.revision, 0)
        as_of.follow(ev.kind, ev.namespace, ev.name, rec)
        if ev.kind == objects.SERVICE_STATUS:
            # A status change is a modification of the service as clients see it.
            if rec is None:
                continue
            status: Record | None = rec
            svc_rec = await store.run(as_of.get, objects.SERVICE, ev.namespace, ev.name, ev.revision)
            if svc_rec is None:
                continue
            op = MODIFIED
        else:
            svc_rec = Record(objects.SERVICE, ev.namespace, ev.name, ev.data, ev.revision, 0)
            status = (
                None
                if op == DELETED
                else await store.run(as_of.get, objects.SERVICE_STATUS, ev.namespace, ev.name, ev.revision)
            )
        labels = svc_rec.data.get("spec", {}).get("labels", {})
        if not sel.matches(labels, _service_fields(svc_rec, status) if sel.fields else {}):
            continue
        yield service_pb2.WatchServicesResponse(
            service=objects.service_from_record(svc_rec, status),
            event_type=listing.EVENT_TYPES[op],
            revision=ev.revision,
        )

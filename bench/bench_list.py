"""ListServices latency with 10,000 services: one page vs everything vs a cheap RPC, same run, same server."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.common import bootstrap_token, running_runed, setting
from rune.api import auth_pb2, auth_pb2_grpc, service_pb2, service_pb2_grpc

SERVICES = setting("BENCH_LIST_SERVICES", 10000)
PAGE = 100


def _populate(data_dir: Path, n: int) -> None:
    """Write ``n`` service records (and their first revisions) straight into the store, as CreateService would."""
    from runed.api.namespace import seed_namespaces
    from runed.model import history, objects
    from runed.store.sqlite import open_store

    store = open_store(data_dir)
    try:
        seed_namespaces(store)
        with store.transaction():
            for i in range(n):
                svc = service_pb2.Service(
                    name=f"svc-{i:05d}",
                    namespace="default",
                    runtime="process",
                    labels={"app": f"app-{i % 100}", "tier": "front" if i % 2 else "back"},
                    scale=0,
                )
                svc.process.command = "true"
                svc.metadata.generation = 1
                data = objects.service_record_data(svc, generation=1)
                data["revision"] = 1
                store.put(objects.SERVICE, "default", svc.name, data)
                history.record(store, svc, number=1, generation=1, change_cause="", created_by="bench", keep=0)
    finally:
        store.close()


def _interleaved(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds per call of each, the calls taking turns (other load on the box hits all alike)."""
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()
    for _ in range(repeat):
        for k, call in calls.items():
            t0 = time.perf_counter()
            call()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _time(call: Callable[[], object], repeat: int) -> float:
    """Median seconds per call after one warm-up."""
    call()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def list_latency(n: int = SERVICES) -> dict[str, float]:
    """Median latency (ms) of WhoAmI, a 100-service page, a filtered page and the full list of ``n``."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        _populate(data, n)
        # The gRPC role alone: no controller reconciling 10,000 services while we measure.
        with running_runed(role="grpc", data_dir=data) as addrs:
            target = addrs["grpc"]
            md = (("authorization", f"Bearer {bootstrap_token(target)}"),)
            opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
            with grpc.insecure_channel(target, options=opts) as ch:
                svc = service_pb2_grpc.ServiceServiceStub(ch)
                who = auth_pb2_grpc.AuthServiceStub(ch)
                page_req = service_pb2.ListServicesRequest(page_size=PAGE)
                last_page = svc.ListServices(page_req, metadata=md)
                for _ in range(3):  # a page from the middle of the keyspace, not only the first one
                    last_page = svc.ListServices(
                        service_pb2.ListServicesRequest(page_size=PAGE, page_token=last_page.next_page_token),
                        metadata=md,
                    )
                mid_req = service_pb2.ListServicesRequest(page_size=PAGE, page_token=last_page.next_page_token)
                filt_req = service_pb2.ListServicesRequest(page_size=PAGE, label_selector_expr="tier=front")
                all_req = service_pb2.ListServicesRequest()
                total = len(svc.ListServices(all_req, metadata=md).services)
                assert total == n, total
                medians = _interleaved(
                    {
                        "whoami_ms": lambda: who.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md),
                        "page_ms": lambda: svc.ListServices(page_req, metadata=md),
                        "mid_page_ms": lambda: svc.ListServices(mid_req, metadata=md),
                        "filtered_page_ms": lambda: svc.ListServices(filt_req, metadata=md),
                    },
                    200,
                )
                out = {k: v * 1000 for k, v in medians.items()}
                out["all_ms"] = _time(lambda: svc.ListServices(all_req, metadata=md), 3) * 1000
                return out


def page_stages(n: int = SERVICES, repeat: int = 300) -> dict[str, float]:
    """Where a page's time goes, in-process on the same store: median ms of each stage of one page of
    100 from the middle of the keyspace, first as built from scratch, then as the handler does it
    with its revision-keyed caches warm."""
    from runed.api import listing
    from runed.api.service import reads
    from runed.api.service.common import status_pb
    from runed.model import objects
    from runed.pipeline import encoded
    from runed.store.sqlite import open_store

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        _populate(data, n)
        store = open_store(data)
        built = listing.Built(objects.service_from_record, service_pb2.ListServicesResponse.SERVICES_FIELD_NUMBER).of(
            store
        )
        after = ("default", f"svc-{n // 2:05d}")
        try:
            recs = store.list(objects.SERVICE, "default", after=after, limit=PAGE + 1).items
            statuses = reads._statuses(store, recs[:PAGE])
            pairs = [(r, statuses.get((r.namespace, r.name))) for r in recs[:PAGE]]
            for r, st in pairs:
                built.framed(r, st)  # kept
            known = built.known
            rest = service_pb2.ListServicesResponse(status=status_pb(0, "Found 100 services"))
            stages: dict[str, Callable[[], object]] = {
                "store read (rows + JSON decode)": lambda: store.list(
                    objects.SERVICE, "default", after=after, limit=PAGE + 1
                ),
                "store read, rows known by revision": lambda: store.list(
                    objects.SERVICE, "default", after=after, limit=PAGE + 1, known=known
                ),
                "revision (page.revision)": store.current_revision,
                "status join (one range read)": lambda: reads._statuses(store, recs[:PAGE]),
                "protos built from dicts": lambda: [objects.service_from_record(r, st) for r, st in pairs],
                "items from the revision cache": lambda: [built.framed(r, st) for r, st in pairs],
                "response in its wire form": lambda: (
                    encoded.joined(
                        service_pb2.ListServicesResponse, [built.framed(r, st) for r, st in pairs], rest
                    ).data
                ),
            }
            return {k: v * 1000 for k, v in _interleaved(stages, repeat).items()}
        finally:
            store.close()


def run() -> None:
    for label, ms in page_stages().items():
        print(f"   stage: {label:<38} {ms:7.3f} ms")
    r = list_latency()
    base = r["whoami_ms"]
    rows = [
        ("WhoAmI (baseline RPC)", r["whoami_ms"]),
        (f"ListServices first page of {PAGE}", r["page_ms"]),
        ("ListServices page from the middle", r["mid_page_ms"]),
        ("ListServices filtered page (50% match)", r["filtered_page_ms"]),
        (f"ListServices all {SERVICES}", r["all_ms"]),
    ]
    for label, ms in rows:
        print(f"{label:<42} {ms:9.2f} ms   x{ms / base:7.1f} baseline")
    print(f"ratio all/page: {r['all_ms'] / r['page_ms']:.0f}")

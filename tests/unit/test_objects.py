"""Record <-> proto conversions of the orchestration kinds keep every field the API accepts."""

from __future__ import annotations

import random
from pathlib import Path

from rune.api import common_pb2, instance_pb2, service_pb2
from runed.model import objects
from runed.store.base import Record


def _service() -> service_pb2.Service:
    svc = service_pb2.Service(
        name="web",
        namespace="prod",
        labels={"app": "web", "tier": "front"},
        runtime="process",
        scale=3,
        restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE,
        env={"A": "1", "PASSWORD": "{{secret:db/password}}"},
    )
    svc.process.command = "python3"
    svc.process.args.extend(["-m", "http.server"])
    svc.process.security_context.user = "nobody"
    svc.health.liveness.type = common_pb2.PROBE_TYPE_HTTP
    svc.health.liveness.success_threshold = 2
    svc.health.liveness.failure_threshold = 5
    svc.ports.add(name="http", port=8080)
    svc.metadata.generation = 1
    svc.status = service_pb2.SERVICE_STATUS_RUNNING
    return svc


def test_service_round_trip_keeps_labels_process_restart_policy_and_probe_thresholds() -> None:
    svc = _service()
    data = objects.service_record_data(svc, generation=4, change_cause="because")
    assert "status" not in data["spec"]
    back = objects.service_from_record(Record(objects.SERVICE, "prod", "web", data, 10, 1))
    assert dict(back.labels) == {"app": "web", "tier": "front"}
    assert back.process.command == "python3" and list(back.process.args) == ["-m", "http.server"]
    assert back.process.security_context.user == "nobody"
    assert back.restart_policy == common_pb2.RESTART_POLICY_ON_FAILURE
    assert back.health.liveness.success_threshold == 2 and back.health.liveness.failure_threshold == 5
    assert back.metadata.generation == 4
    # Without a controller status the service is Pending; with one it is merged.
    assert back.status == service_pb2.SERVICE_STATUS_PENDING
    status = Record(objects.SERVICE_STATUS, "prod", "web", {"status": "Running"}, 11, 11)
    assert objects.service_from_record(Record(objects.SERVICE, "prod", "web", data, 10, 1), status).status == (
        service_pb2.SERVICE_STATUS_RUNNING
    )


def test_spec_hash_ignores_scale_and_labels_but_not_runtime_fields() -> None:
    a = _service()
    b = _service()
    b.scale = 7
    b.labels["extra"] = "x"
    b.metadata.generation = 9
    assert objects.spec_hash(a) == objects.spec_hash(b)
    assert objects.spec_fingerprint(a) != objects.spec_fingerprint(b)
    c = _service()
    c.env["A"] = "2"
    assert objects.spec_hash(a) != objects.spec_hash(c)


def test_instance_to_pb_maps_runner_state_and_keeps_secret_references_unresolved() -> None:
    data = {
        "instance": {"id": "web-0", "name": "web-0", "runner": "process"},
        "service": "web",
        "index": 0,
        "generation": 3,
        "state": "BACKOFF",
        "pid": 4242,
        "env": {"PASSWORD": "{{secret:db/password}}"},
        "restart_count": 5,
        "reason": "CrashLoopBackOff",
    }
    inst = objects.instance_to_pb(Record(objects.INSTANCE, "prod", "web-0", data, 3, 1))
    assert inst.status == instance_pb2.INSTANCE_STATUS_FAILED
    assert inst.status_message == "CrashLoopBackOff"
    assert inst.service_name == "web" and inst.namespace == "prod" and inst.node_id == "local"
    assert inst.pid == 4242 and inst.metadata.restart_count == 5 and inst.metadata.generation == 3
    assert inst.environment["PASSWORD"] == "{{secret:db/password}}"
    running = dict(data, state="RUNNING")
    assert objects.instance_to_pb(Record(objects.INSTANCE, "prod", "web-0", running, 4, 1)).status == (
        instance_pb2.INSTANCE_STATUS_RUNNING
    )


def test_status_range_read_matches_one_get_per_service(tmp_path: Path) -> None:
    from runed.api.service.reads import _statuses
    from runed.store.sqlite import open_store

    store = open_store(tmp_path)
    try:
        rng = random.Random(7)
        for ns in ("a", "b"):
            for i in range(300):
                name = f"s{i:03d}"
                store.put(objects.SERVICE, ns, name, {"spec": {}})
                if rng.random() < 0.6:
                    store.put(objects.SERVICE_STATUS, ns, name, {"status": "Running"})
                if rng.random() < 0.3:  # statuses left behind by deleted services interleave
                    store.put(objects.SERVICE_STATUS, ns, name + "-gone", {"status": "Failed"})
        services = store.list(objects.SERVICE).items
        for lo, hi in ((0, 1), (0, 100), (250, 400), (0, 600), (599, 600)):
            batch = services[lo:hi]
            expected = {
                (r.namespace, r.name): st
                for r in batch
                if (st := store.get(objects.SERVICE_STATUS, r.namespace, r.name)) is not None
            }
            got = _statuses(store, batch)
            assert {k: v.data for k, v in got.items()} == {k: v.data for k, v in expected.items()}
    finally:
        store.close()


def test_a_final_status_is_final_only_for_the_spec_and_scale_it_was_decided_for() -> None:
    svc = Record(objects.SERVICE, "default", "job", {"spec": {"scale": 2}, "generation": 3}, 10, 1)
    verdict = {"status": "Completed", "final": True, "observed_generation": 3, "desired": 2, "message": "done"}
    status = Record(objects.SERVICE_STATUS, "default", "job", verdict, 11, 1)
    pb = objects.service_from_record(svc, status)
    assert (pb.status, pb.status_final, pb.status_message) == (service_pb2.SERVICE_STATUS_COMPLETED, True, "done")
    for stale in ({"observed_generation": 2}, {"desired": 1}, {"final": False}):
        old = Record(objects.SERVICE_STATUS, "default", "job", dict(verdict, **stale), 11, 1)
        assert not objects.service_from_record(svc, old).status_final, stale
    # Reported fields are never part of the stored spec.
    pb.status_message, pb.status_final = "x", True
    assert set(objects.spec_dict(pb)).isdisjoint(objects.OUTPUT_ONLY)

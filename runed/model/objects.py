"""Stored orchestration kinds and their record <-> proto conversions (the API/controller data contract)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from rune.api import instance_pb2, service_pb2
from runed.store.base import Record

# Kinds. API roles write SERVICE, SERVICE_REVISION, INSTANCE_ACTION, SCALING_OPERATION and
# DELETION_OPERATION; the controller writes SERVICE_STATUS and INSTANCE (and updates operations).
SERVICE = "service"
SERVICE_STATUS = "service_status"
SERVICE_REVISION = "service_revision"
INSTANCE = "instance"
INSTANCE_ACTION = "instance_action"
SCALING_OPERATION = "scaling_operation"
DELETION_OPERATION = "deletion_operation"
NAMESPACE = "namespace"
SECRET = "secret"
CONFIGMAP = "configmap"

# A deletion operation's status: as DeleteService writes it (the controller has not counted its
# instances yet), and the statuses it ends in.
DELETION_INITIALIZING = "initializing"
DELETION_DONE = ("completed", "failed")
# The statuses a scaling operation ends in (one without a status is pending).
SCALING_DONE = ("completed", "failed", "cancelled")


def operation_done(kind: str, data: dict[str, Any]) -> bool:
    """Whether a scaling or deletion operation (``kind``) has ended: nothing changes it any more."""
    if kind == DELETION_OPERATION:
        return data.get("status") in DELETION_DONE
    return data.get("status", "pending") in SCALING_DONE


# The finalizers a deletion can run, in the order it runs them (all of them unless the request names
# some): the instances stopped, then the service's record removed (always, and always last).
FINALIZER_INSTANCE_CLEANUP = "instance-cleanup"
FINALIZER_SERVICE_DEREGISTER = "service-deregister"
DELETION_FINALIZERS = (FINALIZER_INSTANCE_CLEANUP, FINALIZER_SERVICE_DEREGISTER)

# Controller status strings (service_status.status) <-> proto enum. "Deploying" is upstream's word.
SERVICE_STATUS_TO_PB: dict[str, service_pb2.ServiceStatus] = {
    "Pending": service_pb2.SERVICE_STATUS_PENDING,
    "Running": service_pb2.SERVICE_STATUS_RUNNING,
    "Updating": service_pb2.SERVICE_STATUS_UPDATING,
    "Deploying": service_pb2.SERVICE_STATUS_UPDATING,
    "Failed": service_pb2.SERVICE_STATUS_FAILED,
    "Completed": service_pb2.SERVICE_STATUS_COMPLETED,
}
SERVICE_STATUS_FROM_PB: dict[int, str] = {
    service_pb2.SERVICE_STATUS_PENDING: "Pending",
    service_pb2.SERVICE_STATUS_RUNNING: "Running",
    service_pb2.SERVICE_STATUS_UPDATING: "Updating",
    service_pb2.SERVICE_STATUS_FAILED: "Failed",
    service_pb2.SERVICE_STATUS_COMPLETED: "Completed",
}
# Service fields the controller reports and a client never sets: not part of the stored spec.
OUTPUT_ONLY = ("status", "status_message", "status_final")

# Runner states (instance.state, the supervisor state table) -> proto enum. BACKOFF and FATAL are
# failures the caller must see; the reason (e.g. CrashLoopBackOff) travels in status_message.
INSTANCE_STATE_TO_PB: dict[str, instance_pb2.InstanceStatus] = {
    "PENDING": instance_pb2.INSTANCE_STATUS_PENDING,
    "CREATED": instance_pb2.INSTANCE_STATUS_CREATED,
    "STARTING": instance_pb2.INSTANCE_STATUS_STARTING,
    "RUNNING": instance_pb2.INSTANCE_STATUS_RUNNING,
    "BACKOFF": instance_pb2.INSTANCE_STATUS_FAILED,
    "STOPPING": instance_pb2.INSTANCE_STATUS_STOPPING,
    "STOPPED": instance_pb2.INSTANCE_STATUS_STOPPED,
    "EXITED": instance_pb2.INSTANCE_STATUS_EXITED,
    "FATAL": instance_pb2.INSTANCE_STATUS_FAILED,
    "DELETED": instance_pb2.INSTANCE_STATUS_DELETED,
}
# Proto enum -> the lower-case word used in field selectors (status=running).
INSTANCE_STATUS_NAMES: dict[int, str] = {
    v: k.removeprefix("INSTANCE_STATUS_").lower() for k, v in instance_pb2.InstanceStatus.items()
}

# Fields of a Service that do not change what an instance runs: identity, bookkeeping, the number
# of instances and labels. Everything else is in the spec hash, so changing it rolls instances.
_NOT_HASHED = ("id", *OUTPUT_ONLY, "metadata", "scale", "labels")


def instance_outcome(state: str, exit_code: int | None, signal: int | None) -> str:
    """How an instance that will not start again by itself ended: "completed", "failed" or "" (not final).

    EXITED is final by the state table (its restart policy keeps it stopped): a clean exit 0
    completed it, anything else (a code, a signal, an unobserved end) failed it. FATAL could not
    be started at all and is not retried. Every other state still runs or will be restarted.
    """
    state = state.upper()
    if state == "EXITED":
        return "completed" if exit_code == 0 and signal is None else "failed"
    if state == "FATAL":
        return "failed"
    return ""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_dict(msg: Any) -> dict[str, Any]:
    """Proto -> JSON-able dict with proto field names (the stored form)."""
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


M = TypeVar("M", bound=Message)


def from_dict(cls: type[M], data: dict[str, Any]) -> M:
    """A stored dict back to a proto. The constructor is ~30x faster than json_format.ParseDict;
    ParseDict remains the fallback for what the constructor refuses (unknown keys, int64 strings)."""
    try:
        return cls(**data)
    except (TypeError, ValueError, KeyError):
        msg = cls()
        json_format.ParseDict(data, msg, ignore_unknown_fields=True)
        return msg


def spec_dict(svc: service_pb2.Service) -> dict[str, Any]:
    """The stored spec: the whole Service except its observed status."""
    clean = service_pb2.Service()
    clean.CopyFrom(svc)
    for f in OUTPUT_ONLY:
        clean.ClearField(f)  # type: ignore[arg-type]
    return to_dict(clean)


def spec_hash(svc: service_pb2.Service) -> str:
    """Hash of everything that affects running instances (not scale, labels or bookkeeping)."""
    clean = service_pb2.Service()
    clean.CopyFrom(svc)
    for f in _NOT_HASHED:
        clean.ClearField(f)  # type: ignore[arg-type]
    raw = orjson.dumps(to_dict(clean), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:16]


def spec_fingerprint(svc: service_pb2.Service) -> str:
    """Hash of the whole desired spec (including scale and labels): equal means "no change"."""
    clean = service_pb2.Service()
    clean.CopyFrom(svc)
    for f in ("id", *OUTPUT_ONLY, "metadata"):
        clean.ClearField(f)  # type: ignore[arg-type]
    raw = orjson.dumps(to_dict(clean), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:16]


def service_record_data(
    svc: service_pb2.Service, *, generation: int, change_cause: str = "", deletion: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``service`` record for a spec (``svc.metadata`` must already be filled in)."""
    data: dict[str, Any] = {
        "spec": spec_dict(svc),
        "generation": generation,
        "spec_hash": spec_hash(svc),
        "change_cause": change_cause,
    }
    if deletion:
        data["deletion"] = deletion
    return data


def service_from_record(rec: Record, status: Record | None = None) -> service_pb2.Service:
    """The Service proto of a ``service`` record, with the controller's ``service_status`` merged in."""
    svc = from_dict(service_pb2.Service, rec.data.get("spec", {}))
    svc.name = rec.name
    svc.namespace = rec.namespace
    svc.metadata.generation = int(rec.data.get("generation", svc.metadata.generation or 1))
    svc.status = service_pb2.SERVICE_STATUS_PENDING
    if status is not None:
        svc.status = SERVICE_STATUS_TO_PB.get(str(status.data.get("status", "")), service_pb2.SERVICE_STATUS_PENDING)
        svc.status_message = str(status.data.get("message", ""))
        svc.status_final = status_is_final(rec, status)
    return svc


def status_is_final(rec: Record, status: Record) -> bool:
    """The controller called the status final for this very spec and scale (not for an earlier one).

    A spec change bumps the generation and a scale change the desired count: until the controller
    has seen them, its last verdict is about instances that are being replaced or joined.
    """
    data = status.data
    return (
        bool(data.get("final"))
        and int(data.get("observed_generation", 0)) == int(rec.data.get("generation", 1))
        and int(data.get("desired", -1)) == int(rec.data.get("spec", {}).get("scale", 0))
    )


def status_word(status: Record | None) -> str:
    """The service status string a field selector matches (Pending when the controller has not spoken)."""
    if status is None:
        return "Pending"
    word = str(status.data.get("status", "Pending"))
    return "Updating" if word == "Deploying" else word


def instance_to_pb(rec: Record) -> instance_pb2.Instance:
    """The Instance proto of an ``instance`` record; the runner fields override the embedded dict."""
    data = rec.data
    inst = from_dict(instance_pb2.Instance, data.get("instance", {}))
    inst.id = inst.id or rec.name
    inst.namespace = rec.namespace
    if data.get("service"):
        inst.service_name = str(data["service"])
    if not inst.name:
        inst.name = f"{inst.service_name}-{int(data.get('index', 0))}" if inst.service_name else rec.name
    inst.node_id = inst.node_id or "local"
    state = str(data.get("state", "")).upper()
    if state in INSTANCE_STATE_TO_PB:
        inst.status = INSTANCE_STATE_TO_PB[state]
    if data.get("reason"):
        inst.status_message = str(data["reason"])
    if data.get("pid"):
        inst.pid = int(data["pid"])
    if "generation" in data:
        inst.metadata.generation = int(data["generation"])
    if "restart_count" in data:
        inst.metadata.restart_count = int(data["restart_count"])
    env = data.get("env")
    if isinstance(env, dict):
        # Stored env keeps secret references unresolved: exposing it leaks no secret values.
        inst.environment.clear()
        inst.environment.update({str(k): str(v) for k, v in env.items()})
    ports = data.get("ports")
    if isinstance(ports, dict):
        inst.host_ports.update({str(k): int(v) for k, v in ports.items() if isinstance(v, int) and v > 0})
    return inst


def instance_service(rec: Record) -> str:
    """The service an instance belongs to (by name, never by id)."""
    return str(rec.data.get("service") or rec.data.get("instance", {}).get("service_name", ""))


def instance_action_data(desired: str, *, restart_seq: int, timeout_seconds: int) -> dict[str, Any]:
    return {
        "desired": desired,
        "restart_seq": restart_seq,
        "timeout_seconds": timeout_seconds,
        "requested_at": time.time(),
    }

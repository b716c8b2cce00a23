"""ServiceService requests for API tests: a sleeping process service, creating it, expecting a status code."""

from __future__ import annotations

import sys

import grpc
import pytest

from rune.api import service_pb2, service_pb2_grpc
from tests.harness import Runed
from tests.support import Metadata as Auth


def stub_of(r: Runed) -> service_pb2_grpc.ServiceServiceStub:
    """A ServiceService stub on ``r``'s gRPC role."""
    return service_pb2_grpc.ServiceServiceStub(r.channel())


def sleeper(name: str, ns: str = "", labels: dict[str, str] | None = None, **kw: object) -> service_pb2.Service:
    """A process service that sleeps a minute (``ns`` empty: the default namespace)."""
    svc = service_pb2.Service(name=name, namespace=ns, runtime="process", labels=labels or {}, **kw)  # type: ignore[arg-type]
    svc.process.command = sys.executable
    svc.process.args.extend(["-c", "import time; time.sleep(60)"])
    return svc


def create(stub: service_pb2_grpc.ServiceServiceStub, auth: Auth, svc: service_pb2.Service, **kw: object) -> None:
    """CreateService with ``svc`` (``kw``: further request fields such as ``ensure_namespace``)."""
    stub.CreateService(service_pb2.CreateServiceRequest(service=svc, **kw), metadata=auth)  # type: ignore[arg-type]


def fails(fn: object, code: grpc.StatusCode) -> grpc.RpcError:
    """Call ``fn``, which must fail with ``code``; the error."""
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    assert e.value.code() == code, e.value.details()
    return e.value

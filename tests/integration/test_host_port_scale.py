"""A process service with ``expose.host_port`` runs one instance: a larger scale is refused up front."""

from __future__ import annotations

import socket
import sys

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import common_pb2, service_pb2, service_pb2_grpc
from tests.integration.orch import Orch


def _violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    out: dict[str, str] = {}
    for d in status.details:
        bad = error_details_pb2.BadRequest()
        if d.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _svc(name: str, scale: int, host_port: int) -> service_pb2.Service:
    return service_pb2.Service(
        name=name,
        runtime="process",
        scale=scale,
        process=common_pb2.ProcessSpec(command=sys.executable, args=["-c", "import time; time.sleep(3600)"]),
        ports=[common_pb2.ServicePort(name="http", port=8080)],
        expose=common_pb2.ServiceExpose(port="http", host_port=host_port),
    )


def test_scale_above_one_with_a_host_port_is_refused(orch: Orch) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(orch.runed.channel())
    port = free_port()
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("hp", 2, port)), metadata=orch.auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scale must be at most 1" in _violations(err.value)["service.expose.host_port"]

    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("hp", 1, port)), metadata=orch.auth)
    with pytest.raises(grpc.RpcError) as err:
        stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc("hp", 3, port)), metadata=orch.auth)
    assert "service.expose.host_port" in _violations(err.value)
    with pytest.raises(grpc.RpcError) as err:
        stub.ScaleService(service_pb2.ScaleServiceRequest(name="hp", scale=2), metadata=orch.auth)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scale must be at most 1" in _violations(err.value)["scale"]
    # Scale 0 and 1 stay allowed.
    stub.ScaleService(service_pb2.ScaleServiceRequest(name="hp", scale=0), metadata=orch.auth)

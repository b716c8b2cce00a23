"""A lone runed is one node: its controller role registers this host and runs every instance there."""

from __future__ import annotations

import socket

from rune.api import instance_pb2, instance_pb2_grpc, node_pb2, node_pb2_grpc
from tests.integration.orch import EXITER, Orch
from tests.support import eventually


def test_a_lone_runed_is_one_ready_node_that_runs_every_instance(orch: Orch) -> None:
    nodes = node_pb2_grpc.NodeServiceStub(orch.runed.channel())
    listed = eventually(lambda: nodes.ListNodes(node_pb2.ListNodesRequest(), metadata=orch.auth).nodes)
    assert [(n.id, n.address, n.status) for n in listed] == [(socket.gethostname(), "127.0.0.1", "Ready")]
    orch.cast("here", orch.program("sleeper", EXITER), "0", "600", scale=2)
    eventually(lambda: orch.running("here", 2), timeout=30)
    stub = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    insts = stub.ListInstances(instance_pb2.ListInstancesRequest(service_name="here"), metadata=orch.auth).instances
    assert {(i.node_id, i.ip) for i in insts} == {(socket.gethostname(), "127.0.0.1")}
    node = nodes.GetNode(node_pb2.GetNodeRequest(id=socket.gethostname()), metadata=orch.auth).node
    assert node.instances == 2 and node.allocatable.cpu_millis > 0

"""The pipeline's defaults step: an empty namespace becomes the default one, for every method the RBAC table scopes."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from rune.api import admin_pb2, auth_pb2, exec_pb2, health_pb2, logs_pb2, namespace_pb2, secret_pb2, service_pb2
from runed.auth import rbac
from runed.core.names import ALL_NAMESPACES, DEFAULT_NAMESPACE
from runed.pipeline import defaults
from runed.pipeline.methods import Method, all_methods

SCOPED = [m for m in all_methods() if (a := rbac.TABLE.get(m.full_name)) is not None and a.namespace_field]


def _field(msg: Message, path: str) -> str:
    node: object = msg
    for part in path.split("."):
        node = getattr(node, part)
    assert isinstance(node, str)
    return node


def _with_parents(msg: Message, path: str) -> Message:
    """The message with every message on the path present (as a caller that sends it would)."""
    node = msg
    for part in path.split(".")[:-1]:
        child = getattr(node, part)
        child.SetInParent()
        node = child
    return msg


@pytest.mark.parametrize("method", SCOPED, ids=lambda m: m.full_name)
def test_an_empty_namespace_becomes_the_default_one(method: Method) -> None:
    access = rbac.TABLE[method.full_name]
    assert access.namespace_field is not None
    req = _with_parents(method.request_cls(), access.namespace_field)
    before = rbac.namespace_of(access, req)
    defaults.apply(access, req)
    assert _field(req, access.namespace_field) == DEFAULT_NAMESPACE
    # What authorization and the audit log read is what they read before the step.
    assert rbac.namespace_of(access, req) == before == DEFAULT_NAMESPACE


@pytest.mark.parametrize("method", SCOPED, ids=lambda m: m.full_name)
def test_a_given_namespace_and_all_namespaces_are_kept(method: Method) -> None:
    access = rbac.TABLE[method.full_name]
    assert access.namespace_field is not None
    *parents, leaf = access.namespace_field.split(".")
    for value in ("team-a", ALL_NAMESPACES):
        req = _with_parents(method.request_cls(), access.namespace_field)
        node = req
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
        defaults.apply(access, req)
        assert _field(req, access.namespace_field) == value


def test_a_missing_nested_message_stays_missing() -> None:
    # The validator reports ``service`` as required; defaulting must not create it.
    for name, req in (
        ("/rune.api.ServiceService/CreateService", service_pb2.CreateServiceRequest()),
        ("/rune.api.SecretService/UpdateSecret", secret_pb2.UpdateSecretRequest()),
        ("/rune.api.ExecService/StreamExec", exec_pb2.ExecRequest()),
    ):
        defaults.apply(rbac.TABLE[name], req)
        assert req.ListFields() == [], name


def test_nested_fields_are_filled() -> None:
    req = service_pb2.CreateServiceRequest(service=service_pb2.Service(name="web"))
    defaults.apply(rbac.TABLE["/rune.api.ServiceService/CreateService"], req)
    assert req.service.namespace == DEFAULT_NAMESPACE
    first = exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(service_name="web"))
    defaults.apply(rbac.TABLE["/rune.api.ExecService/StreamExec"], first)
    assert first.init.namespace == DEFAULT_NAMESPACE


def test_stream_first_messages_and_health() -> None:
    logs = logs_pb2.LogRequest(resource_target="web")
    defaults.apply(rbac.TABLE["/rune.api.LogService/StreamLogs"], logs)
    assert logs.namespace == DEFAULT_NAMESPACE
    health = health_pb2.GetHealthRequest(component_type="service", namespace=ALL_NAMESPACES)
    defaults.apply(rbac.TABLE["/rune.api.HealthService/GetHealth"], health)
    assert health.namespace == ALL_NAMESPACES


def test_cluster_scoped_and_unlisted_methods_are_untouched() -> None:
    for name, req in (
        ("/rune.api.NamespaceService/GetNamespace", namespace_pb2.GetNamespaceRequest()),
        ("/rune.api.AdminService/ListAuditEvents", admin_pb2.ListAuditEventsRequest()),
        ("/rune.api.AuthService/WhoAmI", auth_pb2.WhoAmIRequest()),
    ):
        defaults.apply(rbac.TABLE[name], req)
        assert req.ListFields() == [], name
    # A method without a table entry is refused by the next stage; this one leaves it alone.
    unlisted = secret_pb2.GetSecretRequest()
    defaults.apply(None, unlisted)
    assert unlisted.ListFields() == []

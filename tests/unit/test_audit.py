"""Which calls are audited, and how the object a request acts on is named in the record."""

from __future__ import annotations

from rune.api import admin_pb2, exec_pb2, secret_pb2, service_pb2
from runed.auth import rbac
from runed.pipeline import audit


def test_reads_are_not_audited_but_secret_reads_and_mutations_are() -> None:
    t = rbac.TABLE
    assert audit.audited(t["/rune.api.ServiceService/GetService"]) is None
    assert audit.audited(t["/rune.api.SecretService/ListSecrets"]) is None
    assert audit.audited(t["/rune.api.AuthService/WhoAmI"]) is None
    assert audit.audited(t["/rune.api.SecretService/GetSecret"]) == ("secrets", "read")
    assert audit.audited(t["/rune.api.ExecService/StreamExec"]) == ("exec", "exec")
    assert audit.audited(t["/rune.api.ServiceService/ScaleService"]) == ("services", "scale")
    assert audit.audited(t["/rune.api.AdminService/AdminBootstrap"]) == ("admin", "bootstrap")
    mutations = [a for a in t.values() if a.resource and a.verb not in audit.READ_VERBS]
    assert all(audit.audited(a) == (a.resource, a.verb) for a in mutations)


def test_object_name_beside_a_nested_namespace() -> None:
    access = rbac.TABLE["/rune.api.ServiceService/CreateService"]
    req = service_pb2.CreateServiceRequest(service=service_pb2.Service(name="web", namespace="a"))
    assert audit.object_name(access, req) == "web"
    access = rbac.TABLE["/rune.api.SecretService/UpdateSecret"]
    req2 = secret_pb2.UpdateSecretRequest(secret=secret_pb2.Secret(name="db", namespace="a"))
    assert audit.object_name(access, req2) == "db"


def test_object_name_of_top_level_nested_and_stream_requests() -> None:
    delete = rbac.TABLE["/rune.api.SecretService/DeleteSecret"]
    assert audit.object_name(delete, secret_pb2.DeleteSecretRequest(name="db")) == "db"
    policy = rbac.TABLE["/rune.api.AdminService/PolicyCreate"]
    req = admin_pb2.PolicyCreateRequest(policy=admin_pb2.Policy(name="viewer"))
    assert audit.object_name(policy, req) == "viewer"
    exec_ = rbac.TABLE["/rune.api.ExecService/StreamExec"]
    first = exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(service_name="web"))
    assert audit.object_name(exec_, first) == "web"
    assert audit.object_name(delete, None) == ""

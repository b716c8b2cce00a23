"""The RBAC table covers every RPC, and the evaluator and built-in policies mean what the issue says."""

from __future__ import annotations

import pytest

from rune.api import exec_pb2, logs_pb2, secret_pb2, service_pb2
from runed.auth import rbac
from runed.auth.identity import BUILTIN_POLICIES
from runed.pipeline.methods import all_methods


def _rules(policy: str) -> list[rbac.Rule]:
    return [rbac.Rule(r["resource"], tuple(r["verbs"]), r["namespace"]) for r in BUILTIN_POLICIES[policy]["rules"]]


def test_every_method_in_the_descriptors_has_an_entry() -> None:
    missing = [m.full_name for m in all_methods() if m.full_name not in rbac.TABLE]
    assert not missing, f"methods without an RBAC entry: {missing}"


def test_secret_values_and_exec_have_their_own_verbs() -> None:
    assert rbac.TABLE["/rune.api.SecretService/GetSecret"].verb == "read"
    assert rbac.TABLE["/rune.api.ExecService/StreamExec"].verb == "exec"
    assert rbac.TABLE["/rune.api.AdminService/ListAuditEvents"] == rbac.Access("admin", "list")


def test_namespace_is_read_from_nested_fields() -> None:
    create = rbac.TABLE["/rune.api.ServiceService/CreateService"]
    req = service_pb2.CreateServiceRequest(service=service_pb2.Service(name="web", namespace="team-a"))
    assert rbac.namespace_of(create, req) == "team-a"
    assert rbac.namespace_of(create, service_pb2.CreateServiceRequest()) == "default"
    secret = rbac.TABLE["/rune.api.SecretService/CreateSecret"]
    assert rbac.namespace_of(secret, secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(namespace="x"))) == "x"


def test_namespace_of_stream_first_messages() -> None:
    logs = rbac.TABLE["/rune.api.LogService/StreamLogs"]
    assert rbac.namespace_of(logs, logs_pb2.LogRequest(namespace="team-b")) == "team-b"
    exec_ = rbac.TABLE["/rune.api.ExecService/StreamExec"]
    first = exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(namespace="team-c", service_name="web"))
    assert rbac.namespace_of(exec_, first) == "team-c"
    # A first frame that is not init names no namespace: the default applies (and the handler refuses it).
    assert rbac.namespace_of(exec_, exec_pb2.ExecRequest(stdin=b"x")) == "default"


def test_namespace_scoped_rule_covers_only_its_namespace() -> None:
    rules = [rbac.Rule("services", ("get",), "team-a")]
    assert rbac.allows(rules, "services", "get", "team-a")
    assert not rbac.allows(rules, "services", "get", "team-b")
    assert not rbac.allows(rules, "services", "get", rbac.ALL_NAMESPACES)
    assert not rbac.allows(rules, "services", "get", rbac.CLUSTER)
    assert not rbac.allows(rules, "services", "list", "team-a")
    assert not rbac.allows(rules, "secrets", "get", "team-a")


def test_deny_by_default() -> None:
    assert not rbac.allows([], "services", "get", "default")


@pytest.mark.parametrize("policy", ["root", "admin"])
def test_root_and_admin_allow_everything(policy: str) -> None:
    for access in rbac.TABLE.values():
        if access.resource:
            assert rbac.allows(_rules(policy), access.resource, access.verb, "anywhere")
            assert rbac.allows(_rules(policy), access.resource, access.verb, rbac.CLUSTER)


def test_readwrite_allows_every_table_entry_except_admin() -> None:
    for name, access in rbac.TABLE.items():
        if not access.resource:
            continue
        allowed = rbac.allows(_rules("readwrite"), access.resource, access.verb, rbac.CLUSTER)
        assert allowed == (access.resource != "admin"), name


def test_readonly_allows_only_reads_outside_admin() -> None:
    for name, access in rbac.TABLE.items():
        if not access.resource:
            continue
        allowed = rbac.allows(_rules("readonly"), access.resource, access.verb, "default")
        expected = access.resource != "admin" and access.verb in ("get", "list", "watch")
        assert allowed == expected, name


def test_describe_names_resource_verb_and_namespace() -> None:
    assert rbac.describe("secrets", "read", "prod") == "secrets:read@prod"
    assert rbac.describe("namespaces", "create", rbac.CLUSTER) == "namespaces:create@cluster"


def test_covers_caps_a_scope_by_the_users_rules() -> None:
    def all_covered(outer: str, inner: str) -> bool:
        return all(rbac.covers(_rules(outer), r) for r in _rules(inner))

    assert all_covered("root", "readwrite") and all_covered("readwrite", "readonly")
    assert not all_covered("readonly", "readwrite") and not all_covered("readwrite", "root")
    lister = rbac.Rule("services", ("list",), "team-a")
    assert rbac.covers(_rules("readonly"), lister)
    # Wildcards in the scope need wildcards in the user's rules; verbs may be covered by several rules.
    assert not rbac.covers([lister], rbac.Rule("services", ("list",), "*"))
    assert not rbac.covers(_rules("readwrite"), rbac.Rule("*", ("get",), "*"))
    split = [rbac.Rule("services", ("get",), "a"), rbac.Rule("*", ("list",), "a")]
    assert rbac.covers(split, rbac.Rule("services", ("get", "list"), "a"))
    assert not rbac.covers(split, rbac.Rule("services", ("get", "list", "delete"), "a"))

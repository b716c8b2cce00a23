"""Authorization: one explicit table from RPC to (resource, verb, namespace field) and a pure evaluator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from runed.core import names

# Namespace used for cluster-scoped calls: only rules whose namespace is "*" cover it.
CLUSTER = ""
ALL_NAMESPACES = names.ALL_NAMESPACES


@dataclass(frozen=True)
class Access:
    """What a call needs. ``namespace_field`` is a dotted path in the request (first message of a
    stream); None means cluster-scoped. ``default_namespace`` applies when the field is empty."""

    resource: str
    verb: str
    namespace_field: str | None = None
    default_namespace: str = names.DEFAULT_NAMESPACE


PUBLIC = Access("", "")  # no authentication (AdminBootstrap: guarded by its own loopback check)
AUTHENTICATED = Access("", "authenticated")  # any valid credential (WhoAmI)

# Every RPC of the contract, and every one added later. Deny by default: a method missing here
# is refused (and a test fails).
TABLE: dict[str, Access] = {
    # ServiceService
    "/rune.api.ServiceService/CreateService": Access("services", "create", "service.namespace"),
    "/rune.api.ServiceService/GetService": Access("services", "get", "namespace"),
    "/rune.api.ServiceService/ListServices": Access("services", "list", "namespace"),
    "/rune.api.ServiceService/WatchServices": Access("services", "watch", "namespace"),
    "/rune.api.ServiceService/UpdateService": Access("services", "update", "service.namespace"),
    "/rune.api.ServiceService/DeleteService": Access("services", "delete", "namespace"),
    "/rune.api.ServiceService/GetDeletionStatus": Access("services", "get", "namespace"),
    "/rune.api.ServiceService/ListDeletionOperations": Access("services", "list", "namespace"),
    "/rune.api.ServiceService/ScaleService": Access("services", "scale", "namespace"),
    "/rune.api.ServiceService/WatchScaling": Access("services", "watch", "namespace"),
    "/rune.api.ServiceService/ListInstances": Access("instances", "list", "namespace"),
    "/rune.api.ServiceService/ListServiceRevisions": Access("services", "list", "namespace"),
    "/rune.api.ServiceService/RollbackService": Access("services", "update", "namespace"),
    # InstanceService
    "/rune.api.InstanceService/GetInstance": Access("instances", "get", "namespace"),
    "/rune.api.InstanceService/ListInstances": Access("instances", "list", "namespace"),
    "/rune.api.InstanceService/StartInstance": Access("instances", "update", "namespace"),
    "/rune.api.InstanceService/StopInstance": Access("instances", "update", "namespace"),
    "/rune.api.InstanceService/RestartInstance": Access("instances", "update", "namespace"),
    "/rune.api.InstanceService/WatchInstances": Access("instances", "watch", "namespace"),
    # Logs and exec (bidi: the namespace comes from the first message)
    "/rune.api.LogService/StreamLogs": Access("logs", "get", "namespace"),
    "/rune.api.ExecService/StreamExec": Access("exec", "exec", "init.namespace"),
    # Health
    "/rune.api.HealthService/GetHealth": Access("health", "get", "namespace"),
    # Secrets and configmaps
    "/rune.api.SecretService/CreateSecret": Access("secrets", "create", "secret.namespace"),
    # Reading secret values is its own verb, so read-only policies can list secrets but not read them.
    "/rune.api.SecretService/GetSecret": Access("secrets", "read", "namespace"),
    "/rune.api.SecretService/UpdateSecret": Access("secrets", "update", "secret.namespace"),
    "/rune.api.SecretService/DeleteSecret": Access("secrets", "delete", "namespace"),
    "/rune.api.SecretService/ListSecrets": Access("secrets", "list", "namespace"),
    "/rune.api.ConfigmapService/CreateConfigmap": Access("configmaps", "create", "configmap.namespace"),
    "/rune.api.ConfigmapService/GetConfigmap": Access("configmaps", "get", "namespace"),
    "/rune.api.ConfigmapService/UpdateConfigmap": Access("configmaps", "update", "configmap.namespace"),
    "/rune.api.ConfigmapService/DeleteConfigmap": Access("configmaps", "delete", "namespace"),
    "/rune.api.ConfigmapService/ListConfigmaps": Access("configmaps", "list", "namespace"),
    # Namespaces are cluster-scoped.
    "/rune.api.NamespaceService/CreateNamespace": Access("namespaces", "create"),
    "/rune.api.NamespaceService/GetNamespace": Access("namespaces", "get"),
    "/rune.api.NamespaceService/ListNamespaces": Access("namespaces", "list"),
    "/rune.api.NamespaceService/DeleteNamespace": Access("namespaces", "delete"),
    "/rune.api.NamespaceService/WatchNamespaces": Access("namespaces", "watch"),
    # Nodes are cluster-scoped; cordon, uncordon and drain change what may run where, delete forgets one.
    "/rune.api.NodeService/ListNodes": Access("nodes", "list"),
    "/rune.api.NodeService/GetNode": Access("nodes", "get"),
    "/rune.api.NodeService/CordonNode": Access("nodes", "update"),
    "/rune.api.NodeService/UncordonNode": Access("nodes", "update"),
    "/rune.api.NodeService/DrainNode": Access("nodes", "update"),
    "/rune.api.NodeService/DeleteNode": Access("nodes", "delete"),
    "/rune.api.NodeService/WatchNodes": Access("nodes", "watch"),
    # Auth: any authenticated caller may ask who it is; tokens are their own resource.
    "/rune.api.AuthService/WhoAmI": AUTHENTICATED,
    "/rune.api.AuthService/CreateToken": Access("tokens", "create"),
    "/rune.api.AuthService/RevokeToken": Access("tokens", "delete"),
    # Admin
    "/rune.api.AdminService/AdminBootstrap": PUBLIC,
    **{
        f"/rune.api.AdminService/{m}": Access("admin", verb)
        for m, verb in {
            "PolicyCreate": "create",
            "PolicyUpdate": "update",
            "PolicyDelete": "delete",
            "PolicyGet": "get",
            "PolicyList": "list",
            "PolicyAttachToSubject": "update",
            "PolicyDetachFromSubject": "update",
            "UserCreate": "create",
            "UserList": "list",
            "TokenList": "list",
            "ListRegistries": "list",
            "GetRegistry": "get",
            "AddRegistry": "create",
            "UpdateRegistry": "update",
            "RemoveRegistry": "delete",
            "BootstrapAuth": "update",
            "TestRegistry": "get",
            "RegistriesStatus": "get",
            "ListAuditEvents": "list",
        }.items()
    },
}


# The words a policy rule may use: each resource and verb of the table, "*", and upstream's resource
# of WhoAmI ("auth"). A rule naming any other grants nothing, so a policy that does is refused.
RESOURCES = frozenset({a.resource for a in TABLE.values() if a.resource} | {"auth", "*"})
VERBS = frozenset({a.verb for a in TABLE.values() if a.verb and a is not AUTHENTICATED} | {"*"})


@dataclass(frozen=True)
class Rule:
    resource: str
    verbs: tuple[str, ...]
    namespace: str = ALL_NAMESPACES


def namespace_of(access: Access, request: Message) -> str:
    """The namespace a request acts in, read from the table's field path (nested allowed)."""
    if access.namespace_field is None:
        return CLUSTER
    node: object = request
    for part in access.namespace_field.split("."):
        if not isinstance(node, Message):
            return access.default_namespace
        node = getattr(node, part, None)
    ns = node if isinstance(node, str) else ""
    return ns or access.default_namespace


def allows(rules: Iterable[Rule], resource: str, verb: str, namespace: str) -> bool:
    """True when some rule covers resource:verb@namespace (``*`` wildcards everywhere)."""
    for r in rules:
        if r.resource not in ("*", resource):
            continue
        if "*" not in r.verbs and verb not in r.verbs:
            continue
        # Cluster-scoped calls and the all-namespaces selector need a rule for every namespace.
        if r.namespace == ALL_NAMESPACES or (namespace not in (CLUSTER, ALL_NAMESPACES) and r.namespace == namespace):
            return True
    return False


def covers(rules: Iterable[Rule], rule: Rule) -> bool:
    """True when ``rules`` allow everything ``rule`` allows (a wildcard in ``rule`` needs one in ``rules``).

    Each verb is checked on its own, so several narrower rules may cover one rule together. Used to
    cap a token's scope by its user's rights.
    """
    have = tuple(rules)
    return all(
        any(
            r.resource in ("*", rule.resource)
            and ("*" in r.verbs or verb in r.verbs)
            and r.namespace in (ALL_NAMESPACES, rule.namespace)
            for r in have
        )
        for verb in rule.verbs
    )


def describe(resource: str, verb: str, namespace: str) -> str:
    where = namespace if namespace not in (CLUSTER,) else "cluster"
    return f"{resource}:{verb}@{where}"

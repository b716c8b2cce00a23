"""Every RPC's handler and validator, by gRPC path: the table the composition root hands to the pipeline.

Written out (not discovered by name) so an editor jumps from a path to its handler and a grep finds
both; ``tests/unit/test_method_coverage.py`` checks that every method of the descriptors is here,
has an RBAC entry, a validator (or an explicit None) and a REST route (or a mark in GRPC_ONLY).
"""

from __future__ import annotations

from collections.abc import Mapping

from runed.api import (
    admin,
    auth,
    configmap,
    exec,
    health,
    instance,
    logs,
    namespace,
    node,
    registries,
    secret,
    service,
)
from runed.pipeline.methods import PACKAGE
from runed.pipeline.stages import Handler, Validator

HANDLERS: dict[str, Handler] = {
    # AdminService
    "/rune.api.AdminService/AdminBootstrap": admin.AdminBootstrap,
    "/rune.api.AdminService/PolicyCreate": admin.PolicyCreate,
    "/rune.api.AdminService/PolicyUpdate": admin.PolicyUpdate,
    "/rune.api.AdminService/PolicyDelete": admin.PolicyDelete,
    "/rune.api.AdminService/PolicyGet": admin.PolicyGet,
    "/rune.api.AdminService/PolicyList": admin.PolicyList,
    "/rune.api.AdminService/PolicyAttachToSubject": admin.PolicyAttachToSubject,
    "/rune.api.AdminService/PolicyDetachFromSubject": admin.PolicyDetachFromSubject,
    "/rune.api.AdminService/UserCreate": admin.UserCreate,
    "/rune.api.AdminService/UserList": admin.UserList,
    "/rune.api.AdminService/TokenList": admin.TokenList,
    "/rune.api.AdminService/ListRegistries": registries.ListRegistries,
    "/rune.api.AdminService/GetRegistry": registries.GetRegistry,
    "/rune.api.AdminService/AddRegistry": registries.AddRegistry,
    "/rune.api.AdminService/UpdateRegistry": registries.UpdateRegistry,
    "/rune.api.AdminService/RemoveRegistry": registries.RemoveRegistry,
    "/rune.api.AdminService/BootstrapAuth": registries.BootstrapAuth,
    "/rune.api.AdminService/TestRegistry": registries.TestRegistry,
    "/rune.api.AdminService/RegistriesStatus": registries.RegistriesStatus,
    "/rune.api.AdminService/ListAuditEvents": admin.ListAuditEvents,
    # AuthService
    "/rune.api.AuthService/WhoAmI": auth.WhoAmI,
    "/rune.api.AuthService/CreateToken": auth.CreateToken,
    "/rune.api.AuthService/RevokeToken": auth.RevokeToken,
    # ConfigmapService
    "/rune.api.ConfigmapService/CreateConfigmap": configmap.CreateConfigmap,
    "/rune.api.ConfigmapService/GetConfigmap": configmap.GetConfigmap,
    "/rune.api.ConfigmapService/UpdateConfigmap": configmap.UpdateConfigmap,
    "/rune.api.ConfigmapService/DeleteConfigmap": configmap.DeleteConfigmap,
    "/rune.api.ConfigmapService/ListConfigmaps": configmap.ListConfigmaps,
    # ExecService
    "/rune.api.ExecService/StreamExec": exec.StreamExec,
    # HealthService
    "/rune.api.HealthService/GetHealth": health.GetHealth,
    # InstanceService
    "/rune.api.InstanceService/GetInstance": instance.GetInstance,
    "/rune.api.InstanceService/ListInstances": instance.ListInstances,
    "/rune.api.InstanceService/StartInstance": instance.StartInstance,
    "/rune.api.InstanceService/StopInstance": instance.StopInstance,
    "/rune.api.InstanceService/RestartInstance": instance.RestartInstance,
    "/rune.api.InstanceService/WatchInstances": instance.WatchInstances,
    # LogService
    "/rune.api.LogService/StreamLogs": logs.StreamLogs,
    # NamespaceService
    "/rune.api.NamespaceService/CreateNamespace": namespace.CreateNamespace,
    "/rune.api.NamespaceService/GetNamespace": namespace.GetNamespace,
    "/rune.api.NamespaceService/ListNamespaces": namespace.ListNamespaces,
    "/rune.api.NamespaceService/DeleteNamespace": namespace.DeleteNamespace,
    "/rune.api.NamespaceService/WatchNamespaces": namespace.WatchNamespaces,
    # NodeService
    "/rune.api.NodeService/ListNodes": node.ListNodes,
    "/rune.api.NodeService/GetNode": node.GetNode,
    "/rune.api.NodeService/CordonNode": node.CordonNode,
    "/rune.api.NodeService/UncordonNode": node.UncordonNode,
    "/rune.api.NodeService/DrainNode": node.DrainNode,
    "/rune.api.NodeService/DeleteNode": node.DeleteNode,
    "/rune.api.NodeService/WatchNodes": node.WatchNodes,
    # SecretService
    "/rune.api.SecretService/CreateSecret": secret.CreateSecret,
    "/rune.api.SecretService/GetSecret": secret.GetSecret,
    "/rune.api.SecretService/UpdateSecret": secret.UpdateSecret,
    "/rune.api.SecretService/DeleteSecret": secret.DeleteSecret,
    "/rune.api.SecretService/ListSecrets": secret.ListSecrets,
    # ServiceService
    "/rune.api.ServiceService/CreateService": service.CreateService,
    "/rune.api.ServiceService/GetService": service.GetService,
    "/rune.api.ServiceService/ListServices": service.ListServices,
    "/rune.api.ServiceService/WatchServices": service.WatchServices,
    "/rune.api.ServiceService/UpdateService": service.UpdateService,
    "/rune.api.ServiceService/DeleteService": service.DeleteService,
    "/rune.api.ServiceService/GetDeletionStatus": service.GetDeletionStatus,
    "/rune.api.ServiceService/ListDeletionOperations": service.ListDeletionOperations,
    "/rune.api.ServiceService/ScaleService": service.ScaleService,
    "/rune.api.ServiceService/WatchScaling": service.WatchScaling,
    "/rune.api.ServiceService/ListInstances": service.ListInstances,
    "/rune.api.ServiceService/ListServiceRevisions": service.ListServiceRevisions,
    "/rune.api.ServiceService/RollbackService": service.RollbackService,
}


def _by_path(service_name: str, by_method: Mapping[str, Validator | None]) -> dict[str, Validator | None]:
    # Each handler module keeps its validators next to its handlers, keyed by method name.
    return {f"/{PACKAGE}.{service_name}/{name}": v for name, v in by_method.items()}


# gRPC path -> validator, or None where a method has nothing to validate (an explicit choice).
VALIDATORS: dict[str, Validator | None] = {
    **_by_path("AdminService", admin.VALIDATORS),
    **_by_path("AdminService", registries.VALIDATORS),
    **_by_path("AuthService", auth.VALIDATORS),
    **_by_path("ConfigmapService", configmap.VALIDATORS),
    **_by_path("ExecService", exec.VALIDATORS),
    **_by_path("HealthService", health.VALIDATORS),
    **_by_path("InstanceService", instance.VALIDATORS),
    **_by_path("LogService", logs.VALIDATORS),
    **_by_path("NamespaceService", namespace.VALIDATORS),
    **_by_path("NodeService", node.VALIDATORS),
    **_by_path("SecretService", secret.VALIDATORS),
    **_by_path("ServiceService", service.VALIDATORS),
}

# Methods served over gRPC only, on purpose (none today): every other method needs a REST route.
GRPC_ONLY: frozenset[str] = frozenset()

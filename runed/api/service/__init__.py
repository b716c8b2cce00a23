"""ServiceService: desired state of services (spec, history, scaling and deletion requests) and watches.

One module per concern; this one names every RPC's handler and validator:

- ``spec.py``     static checks of a service spec (every field error at once, with its path)
- ``refs.py``     checks against the store: referenced objects exist, dependencies form no cycle
- ``runtime.py``  a container service needs a Docker engine that answers
- ``writes.py``   create, update and rollback: the spec and its revision history, in one transaction
- ``reads.py``    get, list (selectors, pages) and watch
- ``deletion.py`` deletion operations the controller carries out, and their progress
- ``scaling.py``  scaling operations the controller carries out, and their progress
- ``common.py``   lookups and response pieces the others share
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.api import instance_pb2
from runed.api import instance as instance_api
from runed.api.service.common import v_name
from runed.api.service.deletion import (
    DeleteService,
    GetDeletionStatus,
    ListDeletionOperations,
    v_delete,
    v_deletion_status,
)
from runed.api.service.deletion import v_list as v_list_deletions
from runed.api.service.reads import GetService, ListServices, WatchServices, v_list, v_watch
from runed.api.service.scaling import ScaleService, WatchScaling, v_scale, v_watch_scaling
from runed.api.service.spec import v_create
from runed.api.service.writes import CreateService, ListServiceRevisions, RollbackService, UpdateService, v_rollback
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext
from runed.pipeline.encoded import Encoded

__all__ = [
    "VALIDATORS",
    "CreateService",
    "DeleteService",
    "GetDeletionStatus",
    "GetService",
    "ListDeletionOperations",
    "ListInstances",
    "ListServiceRevisions",
    "ListServices",
    "RollbackService",
    "ScaleService",
    "UpdateService",
    "WatchScaling",
    "WatchServices",
]


async def ListInstances(
    req: instance_pb2.ListInstancesRequest, ctx: CallContext
) -> Encoded[instance_pb2.ListInstancesResponse]:
    """The instances of services, as InstanceService lists them (the same RPC on both services)."""
    return await instance_api.ListInstances(req, ctx)


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "CreateService": v_create,
    "GetService": v_name,
    "ListServices": v_list,
    "WatchServices": v_watch,
    "UpdateService": v_create,
    "DeleteService": v_delete,
    "GetDeletionStatus": v_deletion_status,
    "ListDeletionOperations": v_list_deletions,
    "ScaleService": v_scale,
    "WatchScaling": v_watch_scaling,
    "ListInstances": instance_api.VALIDATORS["ListInstances"],
    "ListServiceRevisions": v_name,
    "RollbackService": v_rollback,
}

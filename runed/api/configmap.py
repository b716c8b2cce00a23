"""ConfigmapService: the secret lifecycle (upsert, versions, limits), stored in clear."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.api import common_pb2, configmap_pb2
from runed.api.offload import offloaded
from runed.api.secret import check_limits, delete_record, get_record, list_records, v_list, write_record
from runed.core import validation
from runed.core.config import LimitsConfig
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext
from runed.secrets.access import CONFIGMAP_KIND

_DEFAULT_LIMITS = LimitsConfig()


# -- validation -----------------------------------------------------------------------------------
def _v_write(req: Any) -> list[FieldViolation]:
    if not req.HasField("configmap"):
        return [FieldViolation("configmap", "is required")]
    c = req.configmap
    return (
        validation.dns1123_label(c.name, "configmap.name")
        + validation.dns1123_label(c.namespace, "configmap.namespace", allow_empty=True)
        + validation.data_map(
            c.data,
            "configmap.data",
            max_bytes=_DEFAULT_LIMITS.max_object_bytes,
            max_key_len=_DEFAULT_LIMITS.max_key_name_length,
        )
    )


def _v_ref(req: Any) -> list[FieldViolation]:
    return validation.dns1123_label(req.name, "name") + validation.dns1123_label(
        req.namespace, "namespace", allow_empty=True
    )


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "CreateConfigmap": _v_write,
    "GetConfigmap": _v_ref,
    "UpdateConfigmap": _v_write,
    "DeleteConfigmap": _v_ref,
    "ListConfigmaps": lambda req: v_list(req, "configmaps"),
}


# -- conversion -----------------------------------------------------------------------------------
def to_pb(d: dict[str, Any]) -> configmap_pb2.Configmap:
    return configmap_pb2.Configmap(
        name=d["name"],
        namespace=d["namespace"],
        data=d.get("data", {}),
        version=int(d["version"]),
        created_at=d.get("created_at", ""),
        updated_at=d.get("updated_at", ""),
    )


def _ok(d: dict[str, Any]) -> configmap_pb2.ConfigmapResponse:
    return configmap_pb2.ConfigmapResponse(configmap=to_pb(d), status=common_pb2.Status(code=0))


# -- handlers -------------------------------------------------------------------------------------
def _write(ctx: CallContext, c: configmap_pb2.Configmap, *, create: bool, ensure_ns: bool) -> dict[str, Any]:
    """Create or update; the version moves only when the data changes."""
    check_limits(c.data, "configmap.data", ctx.deps.config.config.limits)
    data = dict(c.data)
    return write_record(
        ctx,
        CONFIGMAP_KIND,
        c.namespace,
        c.name,
        create=create,
        ensure_ns=ensure_ns,
        unchanged=lambda cur: cur.get("data", {}) == data,
        record=lambda version, created, now: {
            "name": c.name,
            "namespace": c.namespace,
            "data": data,
            "version": version,
            "created_at": created,
            "updated_at": now,
        },
    )


@offloaded
def CreateConfigmap(req: configmap_pb2.CreateConfigmapRequest, ctx: CallContext) -> configmap_pb2.ConfigmapResponse:
    return _ok(_write(ctx, req.configmap, create=True, ensure_ns=req.ensure_namespace))


@offloaded
def UpdateConfigmap(req: configmap_pb2.UpdateConfigmapRequest, ctx: CallContext) -> configmap_pb2.ConfigmapResponse:
    return _ok(_write(ctx, req.configmap, create=False, ensure_ns=False))


@offloaded
def GetConfigmap(req: configmap_pb2.GetConfigmapRequest, ctx: CallContext) -> configmap_pb2.ConfigmapResponse:
    return _ok(get_record(ctx, CONFIGMAP_KIND, req.namespace, req.name))


@offloaded
def DeleteConfigmap(req: configmap_pb2.DeleteConfigmapRequest, ctx: CallContext) -> common_pb2.Status:
    return delete_record(ctx, CONFIGMAP_KIND, req.namespace, req.name)


@offloaded
def ListConfigmaps(req: configmap_pb2.ListConfigmapsRequest, ctx: CallContext) -> configmap_pb2.ListConfigmapsResponse:
    items = [to_pb(d) for d in list_records(ctx, CONFIGMAP_KIND, req)]
    return configmap_pb2.ListConfigmapsResponse(configmaps=items, status=common_pb2.Status(code=0))

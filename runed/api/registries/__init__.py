"""Image registry admin RPCs (AdminService, served through admin.py): registries in the store, credentials in secrets.

Responses never carry usernames, passwords, tokens or data values. The modules:

- ``records.py``     the stored record, its wire form, saving one
- ``credentials.py`` where credentials live (a secret) and how they are written and read
- ``checks.py``      request validation (shared with the runefile import)
- ``configured.py``  the start-up import of ``docker.registries`` from the runefile
- ``probe.py``       TestRegistry's request to the registry's /v2/ API
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rune.api import admin_pb2
from runed.api.offload import offloaded
from runed.api.registries import probe
from runed.api.registries.checks import v_bootstrap, v_config, v_name, v_test
from runed.api.registries.configured import import_configured
from runed.api.registries.credentials import infer_type, resolve_credentials, secret_ref
from runed.api.registries.records import KIND, SCOPE, get, save, to_pb
from runed.api.secret import now_rfc3339
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext
from runed.secrets.access import SECRET_KIND
from runed.store.base import iter_all

__all__ = [
    "VALIDATORS",
    "AddRegistry",
    "BootstrapAuth",
    "GetRegistry",
    "ListRegistries",
    "RegistriesStatus",
    "RemoveRegistry",
    "TestRegistry",
    "UpdateRegistry",
    "import_configured",
]

VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "ListRegistries": None,
    "GetRegistry": v_name,
    "AddRegistry": v_config,
    "UpdateRegistry": lambda req: v_config(req, adding=False),
    "RemoveRegistry": v_name,
    "BootstrapAuth": v_bootstrap,
    "TestRegistry": v_test,
    "RegistriesStatus": None,
}


@offloaded
def ListRegistries(req: admin_pb2.ListRegistriesRequest, ctx: CallContext) -> admin_pb2.ListRegistriesResponse:
    return admin_pb2.ListRegistriesResponse(registries=[to_pb(r.data) for r in iter_all(ctx.deps.store, KIND, SCOPE)])


@offloaded
def GetRegistry(req: admin_pb2.GetRegistryRequest, ctx: CallContext) -> admin_pb2.GetRegistryResponse:
    return admin_pb2.GetRegistryResponse(registry=to_pb(get(ctx.deps.store, req.name)))


@offloaded
def AddRegistry(req: admin_pb2.AddRegistryRequest, ctx: CallContext) -> admin_pb2.AddRegistryResponse:
    return admin_pb2.AddRegistryResponse(
        registry=to_pb(save(ctx.deps.store, ctx.deps.crypto, req.registry, create=True))
    )


@offloaded
def UpdateRegistry(req: admin_pb2.UpdateRegistryRequest, ctx: CallContext) -> admin_pb2.UpdateRegistryResponse:
    registry = save(ctx.deps.store, ctx.deps.crypto, req.registry, create=False)
    return admin_pb2.UpdateRegistryResponse(registry=to_pb(registry))


@offloaded
def RemoveRegistry(req: admin_pb2.RemoveRegistryRequest, ctx: CallContext) -> admin_pb2.RemoveRegistryResponse:
    store = ctx.deps.store
    with store.transaction():
        reg = get(store, req.name)
        if not reg["auth"].get("from_secret"):
            # The registry's own secret goes with it; a referenced secret belongs to its owner.
            store.delete(SECRET_KIND, *secret_ref("", req.name))
        store.delete(KIND, SCOPE, req.name)
    return admin_pb2.RemoveRegistryResponse(deleted=True)


@offloaded
def BootstrapAuth(req: admin_pb2.BootstrapAuthRequest, ctx: CallContext) -> admin_pb2.BootstrapAuthResponse:
    """Resolve credentials of the selected registries from their secrets and record the outcome."""
    store, crypto = ctx.deps.store, ctx.deps.crypto
    import_configured(ctx.deps)
    selected = [
        r.data
        for r in iter_all(store, KIND, SCOPE)
        if req.all or r.name == req.name or (req.type and r.data["auth"].get("type") == req.type)
    ]
    if req.name and not selected:
        raise errors.not_found("registry", req.name)
    updated = 0
    for reg in selected:
        error = ""
        keys: list[str] = []
        try:
            keys = sorted(resolve_credentials(store, crypto, reg))
        except errors.RuneError as e:
            error = e.message
        if not error and not infer_type(reg["auth"].get("type", ""), keys, reg["auth"].get("region", "")):
            error = "the credentials secret has no recognised keys (token, username+password, .dockerconfigjson)"
        now = now_rfc3339()

        def mutate(
            cur: dict[str, Any] | None, error: str = error, keys: list[str] = keys, now: str = now
        ) -> dict[str, Any] | None:
            if cur is None:
                return None
            cur["last_bootstrap_at"] = now
            cur["last_error"] = error
            if not error:
                cur["auth"]["keys"] = keys
                cur["auth"]["type"] = infer_type(cur["auth"].get("type", ""), keys, cur["auth"].get("region", ""))
            return cur

        store.update(KIND, SCOPE, reg["name"], mutate)
        updated += 0 if error else 1
    return admin_pb2.BootstrapAuthResponse(updated=updated)


async def TestRegistry(req: admin_pb2.TestRegistryRequest, ctx: CallContext) -> admin_pb2.TestRegistryResponse:
    """Reach the registry's /v2/ API (or the image's manifest) with its stored credentials."""
    store = ctx.deps.store
    reg = await store.run(get, store, req.name)
    creds: dict[str, str] = {}
    if reg["auth"].get("keys") or reg["auth"].get("from_secret"):
        try:
            creds = await store.run(resolve_credentials, store, ctx.deps.crypto, reg)
        except errors.NotFound as e:
            return admin_pb2.TestRegistryResponse(ok=False, message=e.message)
    ok, message = await probe.reach(reg["registry"], req.image_ref, creds)
    return admin_pb2.TestRegistryResponse(ok=ok, message=message)


@offloaded
def RegistriesStatus(req: admin_pb2.RegistriesStatusRequest, ctx: CallContext) -> admin_pb2.RegistriesStatusResponse:
    out = []
    for r in iter_all(ctx.deps.store, KIND, SCOPE):
        a = r.data.get("auth", {})
        ns, sname = secret_ref(a.get("from_secret", ""), r.name)
        configured = bool(a.get("region")) or ctx.deps.store.get(SECRET_KIND, ns, sname) is not None
        out.append(
            admin_pb2.RegistryRuntimeStatus(
                name=r.name,
                registry=r.data["registry"],
                type=a.get("type", ""),
                auth_configured=configured,
                last_bootstrap_at=r.data.get("last_bootstrap_at", ""),
                last_error=r.data.get("last_error", ""),
            )
        )
    return admin_pb2.RegistriesStatusResponse(registries=out)

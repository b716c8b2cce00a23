"""Image registry admin RPCs: registries live in the store, their credentials in secrets.

A registry record keeps only where its credentials are (``from_secret``, default a secret
``registry-<name>`` in namespace ``system`` that runed owns); responses never carry usernames,
passwords, tokens or data values.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from rune.api import admin_pb2
from runed.api.namespace import ensure_namespace
from runed.api.secret import now_rfc3339
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.pipeline.context import CallContext
from runed.secrets.access import SECRET_KIND, decrypt_record, secret_record
from runed.store.base import Store, iter_all

if TYPE_CHECKING:
    from runed.server.app import App

KIND = "registry"
SCOPE = ""
SECRET_NAMESPACE = "system"
SECRET_TYPE = "registry"
AUTH_TYPES = ("", "basic", "token", "ecr", "dockerconfigjson")
MANAGE_MODES = ("", "create", "update", "ignore")
TEST_TIMEOUT_SECONDS = 5.0
# host[:port] with an optional leading "*." wildcard (ECR-style patterns).
_HOST_RE = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$"
)
# Docker's own bound on a repository name (255) plus the longest tag or digest suffix.
IMAGE_REF_MAX = 255 + 72
_IMAGE_REF_RE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


# -- credentials ----------------------------------------------------------------------------------
def _inline_credentials(auth: admin_pb2.RegistryAuthConfig) -> dict[str, str]:
    """Credential fields given in the request, as secret data keys."""
    out = dict(auth.data)
    for key in ("username", "password", "token"):
        value = getattr(auth, key)
        if value:
            out[key] = value
    return out


def secret_ref(from_secret: str, name: str) -> tuple[str, str]:
    """``ns/name`` or ``name`` (namespace ``system``); empty means the registry's own secret."""
    if not from_secret:
        return SECRET_NAMESPACE, f"registry-{name}"
    ns, _, sname = from_secret.rpartition("/")
    return ns or SECRET_NAMESPACE, sname


def infer_type(declared: str, keys: Mapping[str, str] | list[str], region: str = "") -> str:
    """Declared type, else token ⇒ token, username+password ⇒ basic, region ⇒ ecr."""
    if declared:
        return declared
    if ".dockerconfigjson" in keys:
        return "dockerconfigjson"
    if "token" in keys:
        return "token"
    if "username" in keys and "password" in keys:
        return "basic"
    if region or "awsAccessKeyId" in keys:
        return "ecr"
    return ""


def _store_credentials(app: App, ns: str, sname: str, data: dict[str, str], *, manage: str, immutable: bool) -> None:
    """Write credentials into their secret per ``manage`` (create | update | ignore)."""
    if manage == "ignore":
        return
    ensure_namespace(app.store, ns, create=True)

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        now = now_rfc3339()
        if cur is None:
            return secret_record(
                app.crypto, ns, sname, type_=SECRET_TYPE, data=data, version=1, created_at=now, updated_at=now
            )
        if immutable or manage == "create" or decrypt_record(app.crypto, cur) == data:
            return None
        return secret_record(
            app.crypto,
            ns,
            sname,
            type_=cur.get("type", SECRET_TYPE),
            data=data,
            version=int(cur["version"]) + 1,
            created_at=cur.get("created_at", now),
            updated_at=now,
        )

    app.store.update(SECRET_KIND, ns, sname, mutate)


def resolve_credentials(store: Store, crypto: Any, reg: Mapping[str, Any]) -> dict[str, str]:
    """The registry's credentials from its secret; NOT_FOUND when the secret is missing."""
    ns, sname = secret_ref(reg["auth"].get("from_secret", ""), reg["name"])
    rec = store.get(SECRET_KIND, ns, sname)
    if rec is None:
        raise errors.not_found("secret", sname, ns)
    return decrypt_record(crypto, rec.data)


# -- conversion -----------------------------------------------------------------------------------
def to_pb(d: Mapping[str, Any]) -> admin_pb2.RegistryConfig:
    """Wire form without any credential value."""
    a = d.get("auth", {})
    return admin_pb2.RegistryConfig(
        name=d["name"],
        registry=d["registry"],
        auth=admin_pb2.RegistryAuthConfig(
            type=a.get("type", ""),
            region=a.get("region", ""),
            from_secret=a.get("from_secret", ""),
            bootstrap=bool(a.get("bootstrap", False)),
            manage=a.get("manage", ""),
            immutable=bool(a.get("immutable", False)),
        ),
    )


def _record(
    cfg: admin_pb2.RegistryConfig, *, cred_keys: list[str], prev: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    a = cfg.auth
    now = now_rfc3339()
    prev_auth = (prev or {}).get("auth", {})
    keys = cred_keys or (prev_auth.get("keys", []) if prev_auth.get("from_secret", "") == a.from_secret else [])
    return {
        "name": cfg.name,
        "registry": cfg.registry,
        "auth": {
            "type": infer_type(a.type, keys, a.region),
            "region": a.region,
            "from_secret": a.from_secret,
            "bootstrap": a.bootstrap,
            "manage": a.manage or "create",
            "immutable": a.immutable,
            # Key names only: enough to derive the type and report status without decrypting.
            "keys": sorted(keys),
        },
        "created_at": (prev or {}).get("created_at", now),
        "updated_at": now,
        "last_bootstrap_at": (prev or {}).get("last_bootstrap_at", ""),
        "last_error": (prev or {}).get("last_error", ""),
    }


# -- validation -----------------------------------------------------------------------------------
def _v_config(req: Any, *, adding: bool = True) -> list[FieldViolation]:
    if not req.HasField("registry"):
        return [FieldViolation("registry", "is required")]
    r = req.registry
    a = r.auth
    out = validation.dns1123_label(r.name, "registry.name")
    if not r.registry:
        out.append(FieldViolation("registry.registry", "is required (registry host, e.g. ghcr.io)"))
    elif not _HOST_RE.match(r.registry):
        out.append(FieldViolation("registry.registry", "must be a host name or host:port, without scheme or path"))
    if a.type not in AUTH_TYPES:
        out.append(FieldViolation("registry.auth.type", f"must be one of {', '.join(t for t in AUTH_TYPES if t)}"))
    if a.manage not in MANAGE_MODES:
        out.append(FieldViolation("registry.auth.manage", "must be create, update or ignore"))
    if a.from_secret:
        ns, _, sname = a.from_secret.rpartition("/")
        out += validation.dns1123_label(ns, "registry.auth.from_secret", allow_empty=True)
        out += validation.dns1123_label(sname, "registry.auth.from_secret")
    creds = _inline_credentials(a)
    out += validation.data_map(a.data, "registry.auth.data", max_bytes=64 * 1024)
    # An update may omit credentials to keep the stored ones.
    if not a.from_secret and adding:
        if a.type == "basic" and not (a.username and a.password):
            out.append(FieldViolation("registry.auth", "type basic needs username and password (or from_secret)"))
        if a.type == "token" and not a.token:
            out.append(FieldViolation("registry.auth.token", "is required for type token (or use from_secret)"))
        if a.type == "dockerconfigjson" and ".dockerconfigjson" not in creds:
            out.append(FieldViolation("registry.auth.data", "type dockerconfigjson needs a .dockerconfigjson key"))
    if a.type == "ecr" and not a.region:
        out.append(FieldViolation("registry.auth.region", "is required for type ecr"))
    if bool(a.username) != bool(a.password):
        out.append(FieldViolation("registry.auth", "username and password go together"))
    return out


def _v_name(req: Any) -> list[FieldViolation]:
    return validation.dns1123_label(req.name, "name")


def _v_bootstrap(req: admin_pb2.BootstrapAuthRequest) -> list[FieldViolation]:
    if sum(bool(x) for x in (req.name, req.type, req.all)) != 1:
        return [FieldViolation("name", "set exactly one of name, type or all")]
    if req.name:
        return validation.dns1123_label(req.name, "name")
    if req.type and req.type not in AUTH_TYPES:
        return [FieldViolation("type", f"must be one of {', '.join(t for t in AUTH_TYPES if t)}")]
    return []


def _v_test(req: admin_pb2.TestRegistryRequest) -> list[FieldViolation]:
    out = validation.dns1123_label(req.name, "name")
    if len(req.image_ref) > IMAGE_REF_MAX:
        out.append(
            FieldViolation("image_ref", f"must be at most {IMAGE_REF_MAX} characters (got {len(req.image_ref)})")
        )
    elif req.image_ref and not _IMAGE_REF_RE.match(req.image_ref):
        out.append(FieldViolation("image_ref", "must be repository[:tag] or repository@sha256:digest"))
    return out


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {
    "ListRegistries": None,
    "GetRegistry": _v_name,
    "AddRegistry": _v_config,
    "UpdateRegistry": lambda req: _v_config(req, adding=False),
    "RemoveRegistry": _v_name,
    "BootstrapAuth": _v_bootstrap,
    "TestRegistry": _v_test,
    "RegistriesStatus": None,
}


# -- handlers -------------------------------------------------------------------------------------
def _get(store: Store, name: str) -> dict[str, Any]:
    rec = store.get(KIND, SCOPE, name)
    if rec is None:
        raise errors.not_found("registry", name)
    return rec.data


async def ListRegistries(req: admin_pb2.ListRegistriesRequest, ctx: CallContext) -> admin_pb2.ListRegistriesResponse:
    return admin_pb2.ListRegistriesResponse(registries=[to_pb(r.data) for r in iter_all(ctx.deps.store, KIND, SCOPE)])


async def GetRegistry(req: admin_pb2.GetRegistryRequest, ctx: CallContext) -> admin_pb2.GetRegistryResponse:
    return admin_pb2.GetRegistryResponse(registry=to_pb(_get(ctx.deps.store, req.name)))


def _save(app: App, cfg: admin_pb2.RegistryConfig, *, create: bool) -> dict[str, Any]:
    store = app.store
    creds = _inline_credentials(cfg.auth)
    with store.transaction():
        prev = store.get(KIND, SCOPE, cfg.name)
        if create and prev is not None:
            raise errors.already_exists("registry", cfg.name)
        if not create and prev is None:
            raise errors.not_found("registry", cfg.name)
        if creds:
            ns, sname = secret_ref(cfg.auth.from_secret, cfg.name)
            # Credentials given inline always land in the registry's secret (manage governs only
            # secrets that already exist).
            _store_credentials(
                app,
                ns,
                sname,
                creds,
                manage="update" if not cfg.auth.from_secret else (cfg.auth.manage or "create"),
                immutable=cfg.auth.immutable and bool(cfg.auth.from_secret),
            )
        data = _record(cfg, cred_keys=sorted(creds), prev=prev.data if prev else None)
        store.put(KIND, SCOPE, cfg.name, data)
    return data


async def AddRegistry(req: admin_pb2.AddRegistryRequest, ctx: CallContext) -> admin_pb2.AddRegistryResponse:
    return admin_pb2.AddRegistryResponse(registry=to_pb(_save(ctx.deps, req.registry, create=True)))


async def UpdateRegistry(req: admin_pb2.UpdateRegistryRequest, ctx: CallContext) -> admin_pb2.UpdateRegistryResponse:
    return admin_pb2.UpdateRegistryResponse(registry=to_pb(_save(ctx.deps, req.registry, create=False)))


async def RemoveRegistry(req: admin_pb2.RemoveRegistryRequest, ctx: CallContext) -> admin_pb2.RemoveRegistryResponse:
    store = ctx.deps.store
    with store.transaction():
        reg = _get(store, req.name)
        if not reg["auth"].get("from_secret"):
            # The registry's own secret goes with it; a referenced secret belongs to its owner.
            store.delete(SECRET_KIND, *secret_ref("", req.name))
        store.delete(KIND, SCOPE, req.name)
    return admin_pb2.RemoveRegistryResponse(deleted=True)


def import_configured(app: App) -> None:
    """Registries declared in the runefile (docker.registries) join the store if missing.

    A registry already stored keeps its settings; with ``manage: update`` (and not ``immutable``)
    its credentials secret is refreshed from the runefile. Called at start (every role; losing a
    race to another role is fine) and by BootstrapAuth.
    """
    store = app.store
    for e in app.config.docker.registries:
        if not e.name:
            continue
        a = e.auth
        if store.get(KIND, SCOPE, e.name) is not None:
            creds = {
                **a.data,
                **{k: v for k, v in (("username", a.username), ("password", a.password), ("token", a.token)) if v},
            }
            if creds and a.manage == "update" and not a.immutable:
                _store_credentials(app, *secret_ref(a.from_secret, e.name), creds, manage="update", immutable=False)
            continue
        cfg = admin_pb2.RegistryConfig(
            name=e.name,
            registry=e.registry,
            auth=admin_pb2.RegistryAuthConfig(
                type=a.type,
                username=a.username,
                password=a.password,
                token=a.token,
                region=a.region,
                from_secret=a.from_secret,
                bootstrap=a.bootstrap,
                manage=a.manage,
                immutable=a.immutable,
                data=a.data,
            ),
        )
        vs = _v_config(admin_pb2.AddRegistryRequest(registry=cfg))
        if vs:
            raise errors.FailedPrecondition(
                f'docker.registries entry "{e.name}" is invalid: '
                + "; ".join(f"{v.field}: {v.description}" for v in vs)
            )
        with contextlib.suppress(errors.AlreadyExists):
            _save(app, cfg, create=True)


async def BootstrapAuth(req: admin_pb2.BootstrapAuthRequest, ctx: CallContext) -> admin_pb2.BootstrapAuthResponse:
    """Resolve credentials of the selected registries from their secrets and record the outcome."""
    app = ctx.deps
    import_configured(app)
    selected = [
        r.data
        for r in iter_all(app.store, KIND, SCOPE)
        if req.all or r.name == req.name or (req.type and r.data["auth"].get("type") == req.type)
    ]
    if req.name and not selected:
        raise errors.not_found("registry", req.name)
    updated = 0
    for reg in selected:
        error = ""
        keys: list[str] = []
        try:
            keys = sorted(resolve_credentials(app.store, app.crypto, reg))
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

        app.store.update(KIND, SCOPE, reg["name"], mutate)
        updated += 0 if error else 1
    return admin_pb2.BootstrapAuthResponse(updated=updated)


def _base_url(host: str) -> str:
    """Loopback registries speak plain HTTP (the docker 'insecure registry' convention)."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return f"{'http' if bare in _LOOPBACK else 'https'}://{host}"


def _auth_header(creds: Mapping[str, str]) -> dict[str, str]:
    if creds.get("token"):
        return {"Authorization": f"Bearer {creds['token']}"}
    if creds.get("username") and creds.get("password"):
        raw = f"{creds['username']}:{creds['password']}".encode()
        return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}
    return {}


async def _probe(base: str, path: str, creds: Mapping[str, str]) -> tuple[bool, str]:
    headers = {
        "Accept": "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        **_auth_header(creds),
    }
    async with httpx.AsyncClient(timeout=TEST_TIMEOUT_SECONDS, follow_redirects=True) as client:
        resp = await client.request("HEAD" if "/manifests/" in path else "GET", base + path, headers=headers)
        challenge = resp.headers.get("www-authenticate", "")
        if (
            resp.status_code == 401
            and challenge.lower().startswith("bearer ")
            and "Basic" in headers.get("Authorization", "Basic")
        ):
            # Token-service registries (Docker Hub, GHCR): trade the basic credentials for a token.
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            realm = params.pop("realm", "")
            if realm:
                basic = {k: v for k, v in headers.items() if k == "Authorization"}
                tok = await client.get(realm, params=params, headers=basic)
                if tok.status_code == 200:
                    token = tok.json().get("token") or tok.json().get("access_token", "")
                    headers["Authorization"] = f"Bearer {token}"
                    resp = await client.request(
                        "HEAD" if "/manifests/" in path else "GET", base + path, headers=headers
                    )
    if resp.status_code == 200:
        return True, f"{path} answered 200"
    return False, f"{path} answered HTTP {resp.status_code}"


async def TestRegistry(req: admin_pb2.TestRegistryRequest, ctx: CallContext) -> admin_pb2.TestRegistryResponse:
    """Reach the registry's /v2/ API (or the image's manifest) with its stored credentials."""
    app = ctx.deps
    reg = _get(app.store, req.name)
    creds: dict[str, str] = {}
    if reg["auth"].get("keys") or reg["auth"].get("from_secret"):
        try:
            creds = resolve_credentials(app.store, app.crypto, reg)
        except errors.NotFound as e:
            return admin_pb2.TestRegistryResponse(ok=False, message=e.message)
    path = "/v2/"
    if req.image_ref:
        repo, tag = req.image_ref, "latest"
        if "@" in repo:
            repo, tag = repo.split("@", 1)
        elif ":" in repo.rsplit("/", 1)[-1]:
            repo, tag = repo.rsplit(":", 1)
        path = f"/v2/{repo}/manifests/{tag}"
    try:
        ok, message = await _probe(_base_url(reg["registry"]), path, creds)
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        # httpx messages name the URL (which never carries credentials) and the failure.
        return admin_pb2.TestRegistryResponse(ok=False, message=f"{reg['registry']}: {type(e).__name__}: {e}")
    return admin_pb2.TestRegistryResponse(ok=ok, message=f"{reg['registry']}: {message}")


async def RegistriesStatus(
    req: admin_pb2.RegistriesStatusRequest, ctx: CallContext
) -> admin_pb2.RegistriesStatusResponse:
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

"""Operations endpoints: /healthz, /readyz, /livez, /version, /info, /config, /metrics and /openapi.json.

All are public except ``/config``, which shows the running configuration (credentials redacted) to
callers allowed ``admin:get``: the same authentication (and rate limit) and the same RBAC check
as the API's admin methods.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
from google import protobuf
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import runed
from rune.gateway.http import error_response, request_id_of
from rune.gateway.metrics import render
from rune.gateway.middleware import QUOTA_KEY
from rune.gateway.openapi import document
from rune.gateway.tls import CN_KEY
from runed import __version__
from runed.auth import keycheck, rbac
from runed.auth.identity import load_server_key
from runed.core import errors
from runed.core.config import Config
from runed.core.config.redact import redacted
from runed.core.readiness import ready_file
from runed.pipeline import methods
from runed.pipeline.stages import Pipeline
from runed.secrets.crypto import ENV_MASTER_KEY, CryptoError, SecretCrypto
from runed.store.base import Store
from runed.store.check import schema_state
from runed.transport import metrics as runed_metrics

JSON = "application/json"
GRPC_CHECK_TIMEOUT = 1.0
# What /config needs: the admin methods' reading right.
CONFIG_ACCESS = rbac.Access("admin", "get")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def _git(*args: str) -> str:
    """``git args`` in the source checkout runed runs from ("" when it is not one, or git fails)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def git_commit() -> str:
    """The source checkout's commit, when runed runs from one (else "")."""
    return _git("rev-parse", "--short=12", "HEAD")


@functools.cache
def build_info() -> dict[str, str]:
    """Commit and build date: from ``runed/BUILD_INFO.json`` when a packaging step wrote one, else the
    checkout's commit and its commit date (``source`` says which; empty strings when neither exists)."""
    stamped = Path(runed.__file__).resolve().parent / "BUILD_INFO.json"
    try:
        raw = json.loads(stamped.read_text())
        return {"commit": str(raw.get("commit", "")), "buildDate": str(raw.get("buildDate", "")), "source": "stamp"}
    except (OSError, ValueError, AttributeError):
        pass
    commit = git_commit()
    if commit:
        return {"commit": commit, "buildDate": _git("log", "-1", "--format=%cI", "HEAD"), "source": "git"}
    return {"commit": "", "buildDate": "", "source": ""}


def features(config: Config) -> dict[str, bool]:
    """What this runed offers, as configured: what a dashboard or client may rely on."""
    tls = config.server.tls
    return {
        "grpc": True,
        "grpcReflection": True,
        "rest": True,
        "connectUnary": True,
        "serverSentEvents": True,
        "websocket": True,
        "openapi": True,
        "metrics": runed_metrics.ENV in os.environ,
        "tls": tls.enabled,
        "mtls": tls.enabled and bool(tls.client_ca_file),
        "mtlsRequired": tls.enabled and bool(tls.client_ca_file) and tls.require_client_cert,
        "oidc": config.auth.oidc.enabled,
        "rateLimit": config.auth.rate_limit.requests_per_second > 0,
        "cors": bool(config.server.cors.allowed_origins),
        "secretEncryption": True,
        "processRuntime": True,
        "dockerRuntime": Path(config.docker.socket).exists(),
    }


class Operations:
    """Probes and introspection for one rest role process."""

    def __init__(self, config: Config, store: Store, pipeline: Pipeline) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.started = time.time()
        self._channel: grpc.aio.Channel | None = None
        self._channel_target = ""
        self._crypto: SecretCrypto | None = None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
            Route("/livez", self.livez, methods=["GET", "HEAD"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/config", self.config_view, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/descriptor.binpb", self.descriptors, methods=["GET"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    def _store_check(self) -> tuple[bool, str]:
        try:
            rev = self.store.current_revision()
        except Exception as e:
            return False, f"store not usable: {e}"
        return True, f"open (revision {rev})"

    def _store_ready(self) -> tuple[bool, str]:
        """Ready to serve from the store: its connections work, the database is reachable and migrated,
        and this host's keys still match the store's check values (another host may have rotated the KEK)."""
        db_ok, db_detail = schema_state(self.config.store.url).ready()
        if not db_ok:
            return db_ok, db_detail
        ok, detail = self._store_check()
        if not ok:
            return ok, detail
        try:
            if self._crypto is None:
                self._crypto = SecretCrypto(self.config)
            kid = self._crypto.active_kid
        except CryptoError:
            return False, f"{db_detail}; the secrets KEK cannot be loaded"
        where = str(self._crypto.path) if self._crypto.source == "file" else ENV_MASTER_KEY
        keys = keycheck.HostKeys(load_server_key(self.config.data_path), kid, self.config.data_path, where)
        if keycheck.mismatches(self.store, keys):
            # The details (key files, check values) are for the host's operator: `runed validate` prints them.
            return False, f"{db_detail}; this host's keys do not match the store's (run `runed validate` here)"
        return True, f"{db_detail}; keys match"

    async def _grpc_check(self) -> tuple[bool, str]:
        marker = ready_file(self.config, "grpc")
        try:
            address = str(json.loads(marker.read_text())["address"])
        except (OSError, ValueError, KeyError):
            return False, "grpc role not ready (no ready file)"
        host, _, port = address.rpartition(":")
        target = f"{'127.0.0.1' if host in ('0.0.0.0', '', '::') else host}:{port}"
        if self._channel is None or self._channel_target != target:
            if self._channel is not None:
                await self._channel.close()
            self._channel = grpc.aio.insecure_channel(target)
            self._channel_target = target
        if self.config.server.tls.enabled:
            # A plaintext probe cannot speak to a TLS listener; the ready file is what we have.
            return True, f"ready file present ({address})"
        try:
            resp = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=GRPC_CHECK_TIMEOUT
            )
        except grpc.aio.AioRpcError as e:
            return False, f"grpc health check on {target} failed: {e.code().name}"
        if resp.status != health_pb2.HealthCheckResponse.SERVING:
            return False, f"grpc on {target} is {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
        return True, f"serving on {target}"

    async def readyz(self, request: Request) -> Response:
        # In a thread: a database that does not answer must not hold up the event loop.
        store_ok, store_msg = await asyncio.to_thread(self._store_ready)
        grpc_ok, grpc_msg = await self._grpc_check()
        checks = {"store": {"ok": store_ok, "detail": store_msg}, "grpc": {"ok": grpc_ok, "detail": grpc_msg}}
        failing = [name for name, c in checks.items() if not c["ok"]]
        body = {"status": "ok" if not failing else "unavailable", "failing": failing, "checks": checks}
        return _json(body, 200 if not failing else 503)

    async def livez(self, request: Request) -> Response:
        t0 = time.perf_counter()
        await asyncio.sleep(0)
        lag_ms = (time.perf_counter() - t0) * 1000
        store_ok, store_msg = await self.store.run(self._store_check)
        components: dict[str, dict[str, Any]] = {
            "process": {"ok": True, "pid": os.getpid(), "uptime_seconds": round(time.time() - self.started, 3)},
            "event_loop": {"ok": lag_ms < 1000, "lag_ms": round(lag_ms, 3)},
            "store": {"ok": store_ok, "detail": store_msg},
            "pipeline": {"ok": True, "methods": len(self.pipeline.routes)},
        }
        ok = all(c["ok"] for c in components.values())
        return _json({"status": "ok" if ok else "failing", "components": components}, 200 if ok else 503)

    async def version(self, request: Request) -> Response:
        return _json(
            {
                "version": __version__,
                "git_commit": git_commit(),
                "python": platform.python_version(),
                "grpc": grpc.__version__,
                "protobuf": protobuf.__version__,
            }
        )

    async def info(self, request: Request) -> Response:
        """Version, commit, build date and features (public, like /version)."""
        return _json(
            {
                "name": "runed",
                "version": __version__,
                **build_info(),
                "python": platform.python_version(),
                "grpc": grpc.__version__,
                "protobuf": protobuf.__version__,
                "features": features(self.config),
            }
        )

    async def config_view(self, request: Request) -> Response:
        """The running configuration, credentials redacted; ``admin:get`` only."""
        rid = request_id_of(request)
        metadata = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        try:
            principal = await self.pipeline.authenticator.authenticate(
                metadata,
                request.scope.get(CN_KEY, ""),
                lambda quota: request.scope.__setitem__(QUOTA_KEY, quota),
            )
            await self.store.run(
                self.pipeline.authorizer.check, principal, CONFIG_ACCESS.resource, CONFIG_ACCESS.verb, rbac.CLUSTER
            )
        except errors.RuneError as err:
            return error_response(err, rid)
        body = {"source": self.config.source, "config": redacted(self.config)}
        return Response(orjson.dumps(body), media_type=JSON, headers={"x-request-id": rid})

    async def metrics(self, request: Request) -> Response:
        body, ctype = await self.store.run(render, self.store)
        return Response(body, media_type=ctype)

    async def descriptors(self, request: Request) -> Response:
        return Response(descriptor_set(), media_type="application/octet-stream")

    async def openapi(self, request: Request) -> Response:
        return Response(document(), media_type=JSON)


@functools.cache
def descriptor_set() -> bytes:
    """Every rune.api file and its imports as a FileDescriptorSet (``buf curl --schema`` reads it)."""
    fds = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd: Any) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            add(dep)
        seen.add(fd.name)
        proto = fds.file.add()
        fd.CopyToProto(proto)

    for mod in methods.pb2_modules().values():
        add(mod.DESCRIPTOR)
    return fds.SerializeToString()

"""Validation of registry requests, shared with the runefile import (the same rules for both ways in)."""

from __future__ import annotations

import re
from typing import Any

from rune.api import admin_pb2
from runed.api.registries.credentials import inline_credentials
from runed.core import validation
from runed.core.errors import FieldViolation

AUTH_TYPES = ("", "basic", "token", "ecr", "dockerconfigjson")
MANAGE_MODES = ("", "create", "update", "ignore")
# host[:port] with an optional leading "*." wildcard (ECR-style patterns).
_HOST_RE = re.compile(
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$"
)
# Docker's own bound on a repository name (255) plus the longest tag or digest suffix.
IMAGE_REF_MAX = 255 + 72
_IMAGE_REF_RE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?$")


def v_config(req: Any, *, adding: bool = True) -> list[FieldViolation]:
    """Validator of AddRegistry, and with ``adding`` False of UpdateRegistry (which may omit credentials)."""
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
    creds = inline_credentials(a)
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


def v_name(req: Any) -> list[FieldViolation]:
    """Validator of requests that name one registry."""
    return validation.dns1123_label(req.name, "name")


def v_bootstrap(req: admin_pb2.BootstrapAuthRequest) -> list[FieldViolation]:
    """Validator of BootstrapAuth: exactly one selector."""
    if sum(bool(x) for x in (req.name, req.type, req.all)) != 1:
        return [FieldViolation("name", "set exactly one of name, type or all")]
    if req.name:
        return validation.dns1123_label(req.name, "name")
    if req.type and req.type not in AUTH_TYPES:
        return [FieldViolation("type", f"must be one of {', '.join(t for t in AUTH_TYPES if t)}")]
    return []


def v_test(req: admin_pb2.TestRegistryRequest) -> list[FieldViolation]:
    """Validator of TestRegistry."""
    out = validation.dns1123_label(req.name, "name")
    if len(req.image_ref) > IMAGE_REF_MAX:
        out.append(
            FieldViolation("image_ref", f"must be at most {IMAGE_REF_MAX} characters (got {len(req.image_ref)})")
        )
    elif req.image_ref and not _IMAGE_REF_RE.match(req.image_ref):
        out.append(FieldViolation("image_ref", "must be repository[:tag] or repository@sha256:digest"))
    return out

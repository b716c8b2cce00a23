"""Configmaps and secrets in a cast file, checked and turned into API messages."""

from __future__ import annotations

import os
import re
from typing import Any

from rune.cli.castfile.checks import Problems, object_name, str_map
from rune.cli.castfile.lines import LineDict

SECRET_KEYS = {"name", "namespace", "type", "data", "value", "valueBase64", "engine", "rotation", "skip"}
CONFIGMAP_KEYS = {"name", "namespace", "data", "skip"}
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _expand_env(value: str) -> str:
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1) or m.group(2), ""), value)


def configmap(c: Problems, spec: Any, ns_override: str | None) -> Any | None:
    """A ``configmap_pb2.Configmap``, or None when skipped or not a mapping."""
    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "configmap must be a mapping")
        return None
    c.keys(spec, CONFIGMAP_KEYS, "configmap")
    if spec.get("skip"):
        return None
    from rune.api import configmap_pb2

    name = object_name(c, spec, "configmap")
    data = str_map(c, spec.get("data"), "configmap data", c.line(spec, "data"))
    if not data:
        c.err(c.line(spec, "data"), f"configmap '{name}': 'data' must not be empty")
    ns = ns_override or str(spec.get("namespace") or "default")
    return configmap_pb2.Configmap(name=name, namespace=ns, data=data)


def secret(c: Problems, spec: Any, ns_override: str | None) -> Any | None:
    """A ``secret_pb2.Secret`` (``$VAR`` references expanded from the environment), or None."""
    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "secret must be a mapping")
        return None
    c.keys(spec, SECRET_KEYS, "secret")
    if spec.get("skip"):
        return None
    from rune.api import secret_pb2

    name = object_name(c, spec, "secret")
    typ = str(spec.get("type") or "static")
    data = {k: _expand_env(v) for k, v in str_map(c, spec.get("data"), "secret data", c.line(spec, "data")).items()}
    if "value" in spec:
        data["value"] = _expand_env(str(spec["value"]))
    if "valueBase64" in spec:
        data["valueBase64"] = _expand_env(str(spec["valueBase64"]))
    if typ == "static" and not data:
        c.err(spec.line, f"secret '{name}': a static secret needs 'data', 'value' or 'valueBase64'")
    if typ == "dynamic" and not (isinstance(spec.get("engine"), dict) and spec["engine"].get("name")):
        c.err(spec.line, f"secret '{name}': a dynamic secret needs 'engine.name'")
    if typ not in ("static", "dynamic"):
        c.err(c.line(spec, "type"), f"secret '{name}': type must be 'static' or 'dynamic'")
    ns = ns_override or str(spec.get("namespace") or "default")
    return secret_pb2.Secret(name=name, namespace=ns, type=typ, data=data)

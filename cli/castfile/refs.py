"""What a service refers to: ``envFrom`` sources, ``dependencies`` and secret/configmap mounts."""

from __future__ import annotations

from typing import Any

from rune.cli.castfile.checks import Problems
from rune.cli.castfile.lines import LineDict

MOUNT_KEYS = {"name", "mountPath", "secretName", "configmapName", "configMapName", "items"}


def env_from(c: Problems, raw: Any, line: int) -> list[Any]:
    """``envFrom`` as ``EnvFromSource`` messages: ``secret:NAME``, ``{{configmap:NAME.NS.rune}}`` or a mapping."""
    from rune.api import service_pb2

    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        ln = getattr(item, "line", line)
        if isinstance(item, str):
            s = item.strip().removeprefix("{{").removesuffix("}}").strip()
            kind, _, ref = s.partition(":")
            if kind not in ("secret", "configmap") or not ref:
                c.err(ln, f"envFrom '{item}': expected secret:NAME or configmap:NAME")
                continue
            name, ns = ref, ""
            if ref.endswith(".rune") and ref.count(".") >= 2:
                name, ns = ref.removesuffix(".rune").split(".", 1)
            out.append(
                service_pb2.EnvFromSource(
                    secret_name=name if kind == "secret" else "",
                    configmap_name=name if kind == "configmap" else "",
                    namespace=ns,
                )
            )
        elif isinstance(item, dict):
            c.keys(item, {"secret", "configmap", "namespace", "prefix"}, "envFrom")
            if bool(item.get("secret")) == bool(item.get("configmap")):
                c.err(ln, "envFrom: exactly one of 'secret' or 'configmap'")
                continue
            out.append(
                service_pb2.EnvFromSource(
                    secret_name=str(item.get("secret") or ""),
                    configmap_name=str(item.get("configmap") or ""),
                    namespace=str(item.get("namespace") or ""),
                    prefix=str(item.get("prefix") or ""),
                )
            )
        else:
            c.err(ln, "envFrom items must be strings or mappings")
    return out


def dependencies(c: Problems, raw: Any, ns: str, line: int) -> list[Any]:
    """``dependencies`` as ``DependencyRef`` messages (``rune://TYPE/NS/NAME``, ``KIND:NAME``, ``NAME[.NS]``)."""
    from rune.api import service_pb2

    if not isinstance(raw, list):
        c.err(line, "dependencies must be a list")
        return []
    out = []
    for item in raw:
        ln = getattr(item, "line", line)
        if isinstance(item, str):
            s = item.strip()
            if s.startswith("rune://"):
                parts = s.removeprefix("rune://").split("/")
                if len(parts) < 3 or parts[0] not in ("service", "secret", "configmap"):
                    c.err(ln, f"dependency '{s}': expected rune://TYPE/NAMESPACE/NAME")
                    continue
                out.append(service_pb2.DependencyRef(**{parts[0]: parts[2]}, namespace=parts[1]))
            elif ":" in s:
                kind, _, ref = s.partition(":")
                if kind not in ("service", "secret", "configmap"):
                    c.err(ln, f"dependency '{s}': unknown kind '{kind}'")
                    continue
                name, dep_ns = ref, ns
                if ref.endswith(".rune") and ref.count(".") >= 2:
                    name, dep_ns = ref.removesuffix(".rune").split(".", 1)
                out.append(service_pb2.DependencyRef(**{kind: name}, namespace=dep_ns))
            else:
                name, _, dep_ns = s.partition(".")
                out.append(service_pb2.DependencyRef(service=name, namespace=dep_ns or ns))
        elif isinstance(item, dict):
            c.keys(item, {"service", "secret", "configmap", "namespace"}, "dependency")
            kinds = [k for k in ("service", "secret", "configmap") if item.get(k)]
            if len(kinds) != 1:
                c.err(ln, "dependency: exactly one of service, secret or configmap")
                continue
            out.append(
                service_pb2.DependencyRef(**{kinds[0]: str(item[kinds[0]])}, namespace=str(item.get("namespace") or ns))
            )
        else:
            c.err(ln, "dependencies items must be strings or mappings")
    return out


def mounts(c: Problems, raw: Any, kind: str, line: int) -> list[Any]:
    """``secretMounts`` (``kind="secret"``) or ``configmapMounts`` (``kind="configmap"``) as mount messages."""
    from rune.api import instance_pb2, service_pb2

    if not isinstance(raw, list):
        c.err(line, f"{kind}Mounts must be a list")
        return []
    out = []
    for m in raw:
        if not isinstance(m, LineDict):
            c.err(getattr(m, "line", line), f"{kind} mount must be a mapping")
            continue
        c.keys(m, MOUNT_KEYS, f"{kind} mount")
        if not m.get("name") or not m.get("mountPath"):
            c.err(m.line, f"{kind} mount needs 'name' and 'mountPath'")
        items = [
            instance_pb2.KeyToPath(key=str(i.get("key", "")), path=str(i.get("path", "")))
            for i in (m.get("items") or [])
            if isinstance(i, dict)
        ]
        ref = str(m.get(f"{kind}Name") or m.get("configMapName" if kind == "configmap" else "") or "")
        cls = service_pb2.SecretMount if kind == "secret" else service_pb2.ConfigmapMount
        kwargs: dict[str, Any] = {
            "name": str(m.get("name") or ""),
            "mount_path": str(m.get("mountPath") or ""),
            "items": items,
        }
        kwargs[f"{kind}_name"] = ref
        out.append(cls(**kwargs))
    return out

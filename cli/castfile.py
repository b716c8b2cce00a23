"""Cast files: the YAML people write, checked key by key (with file and line) and turned into API messages.

Top-level keys: ``service``/``services``, ``secret``/``secrets``, ``configmap``/``configmaps``.
Beyond the upstream format, services may say ``runtime: process`` with a ``process`` block and a
``restartPolicy``, so process services can be written; ``configmapMounts`` and ``configMounts``
are both accepted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rune.cli.errors import EXIT_INVALID, CliError

TOP_KEYS = ("service", "services", "secret", "secrets", "configmap", "configmaps")
SERVICE_KEYS = {
    "name", "namespace", "labels", "image", "command", "args", "env", "envFrom", "scale", "ports",
    "resources", "health", "networkPolicy", "expose", "affinity", "autoscale", "secretMounts",
    "configMounts", "configmapMounts", "discovery", "imageRegistry", "registry", "skip", "dependencies",
    "runtime", "process", "restartPolicy",
}  # fmt: skip
# Accepted for compatibility with upstream cast files but not carried by the API.
UNTRANSPORTED = ("networkPolicy", "affinity", "autoscale", "discovery", "imageRegistry", "registry")
SECRET_KEYS = {"name", "namespace", "type", "data", "value", "valueBase64", "engine", "rotation", "skip"}
CONFIGMAP_KEYS = {"name", "namespace", "data", "skip"}
PORT_KEYS = {"name", "port", "targetPort", "protocol"}
PROBE_KEYS = {
    "type", "path", "port", "command", "initialDelaySeconds", "intervalSeconds", "periodSeconds",
    "timeoutSeconds", "failureThreshold", "successThreshold",
}  # fmt: skip
PROCESS_KEYS = {"command", "args", "workingDir", "securityContext"}
SECURITY_KEYS = {"user", "group", "readOnlyFs", "capabilities", "allowedSyscalls", "deniedSyscalls"}
MOUNT_KEYS = {"name", "mountPath", "secretName", "configmapName", "configMapName", "items"}
RESTART_POLICIES = {"always": 1, "onfailure": 2, "on-failure": 2, "never": 3}
PROBE_TYPES = {"http": 1, "tcp": 2, "exec": 3, "command": 3}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE = re.compile(r"\{\{.*?\}\}")
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its line."""

    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)  # type: ignore[arg-type]


@dataclass
class Cast:
    """Everything one or more cast files declare, in apply order."""

    configmaps: list[Any] = field(default_factory=list)
    secrets: list[Any] = field(default_factory=list)
    services: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: Cast) -> None:
        self.configmaps += other.configmaps
        self.secrets += other.secrets
        self.services += other.services
        self.warnings += other.warnings


class CastErrors(CliError):
    """Every problem found in the inputs, one per line (``file:line: message``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid cast file:\n  " + "\n  ".join(problems), EXIT_INVALID)
        self.problems = problems


class _Ctx:
    """Collects problems for one file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []

    def err(self, line: int, msg: str) -> None:
        self.problems.append(f"{self.filename}:{line}: {msg}")

    def keys(self, d: Any, allowed: set[str], what: str) -> None:
        if not isinstance(d, LineDict):
            return
        for k in d:
            if k not in allowed:
                self.err(d.key_lines.get(k, d.line), f"unknown field '{k}' in {what}")

    def line(self, d: Any, key: str) -> int:
        if isinstance(d, LineDict):
            return d.key_lines.get(key, d.line)
        return getattr(d, "line", 0)


def _protect(text: str) -> tuple[str, dict[str, str]]:
    """Swap ``{{...}}`` for plain tokens so YAML does not read them as flow mappings."""
    saved: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        token = f"__rune_tpl_{len(saved)}__"
        saved[token] = m.group(0)
        return token

    return _TEMPLATE.sub(sub, text), saved


def _restore(value: Any, saved: dict[str, str]) -> Any:
    if not saved:
        return value
    if isinstance(value, str):
        for token, original in saved.items():
            value = value.replace(token, original)
        return value
    if isinstance(value, LineDict):
        out = LineDict({_restore(k, saved): _restore(v, saved) for k, v in value.items()})
        out.line, out.key_lines = value.line, {_restore(k, saved): n for k, n in value.key_lines.items()}
        return out
    if isinstance(value, LineList):
        lst = LineList(_restore(v, saved) for v in value)
        lst.line = value.line
        return lst
    return value


def _expand_env(value: str) -> str:
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1) or m.group(2), ""), value)


def _str_map(c: _Ctx, d: Any, where: str, line: int) -> dict[str, str]:
    if d is None:
        return {}
    if isinstance(d, dict):
        return {str(k): "" if v is None else str(v) for k, v in d.items()}
    if isinstance(d, list):
        out: dict[str, str] = {}
        for item in d:
            if isinstance(item, dict) and "key" in item:
                out[str(item["key"])] = str(item.get("value", ""))
            else:
                c.err(getattr(item, "line", line), f"{where}: list items need 'key' and 'value'")
        return out
    c.err(line, f"{where} must be a mapping")
    return {}


def _int(c: _Ctx, v: Any, where: str, line: int, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        c.err(line, f"{where} must be an integer")
        return 0
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        c.err(line, f"{where} must be between {lo} and {hi}" if hi is not None else f"{where} must be >= {lo}")
    return v


def _name(c: _Ctx, spec: LineDict, what: str) -> str:
    name = spec.get("name")
    if not name or not isinstance(name, str):
        c.err(spec.line, f"{what}: 'name' is required")
        return ""
    if not DNS1123.match(name) or len(name) > 63:
        c.err(c.line(spec, "name"), f"{what} name '{name}' must be lowercase letters, digits and '-' (DNS-1123)")
    return name


def _configmap(c: _Ctx, spec: Any, ns_override: str | None) -> Any | None:
    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "configmap must be a mapping")
        return None
    c.keys(spec, CONFIGMAP_KEYS, "configmap")
    if spec.get("skip"):
        return None
    from rune.api import configmap_pb2

    name = _name(c, spec, "configmap")
    data = _str_map(c, spec.get("data"), "configmap data", c.line(spec, "data"))
    if not data:
        c.err(c.line(spec, "data"), f"configmap '{name}': 'data' must not be empty")
    ns = ns_override or str(spec.get("namespace") or "default")
    return configmap_pb2.Configmap(name=name, namespace=ns, data=data)


def _secret(c: _Ctx, spec: Any, ns_override: str | None) -> Any | None:
    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "secret must be a mapping")
        return None
    c.keys(spec, SECRET_KEYS, "secret")
    if spec.get("skip"):
        return None
    from rune.api import secret_pb2

    name = _name(c, spec, "secret")
    typ = str(spec.get("type") or "static")
    data = {k: _expand_env(v) for k, v in _str_map(c, spec.get("data"), "secret data", c.line(spec, "data")).items()}
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


def _probe(c: _Ctx, p: Any, where: str) -> Any | None:
    from rune.api import common_pb2

    if not isinstance(p, LineDict):
        c.err(getattr(p, "line", 0), f"{where} must be a mapping")
        return None
    c.keys(p, PROBE_KEYS, where)
    typ = str(p.get("type") or "").lower()
    if typ not in PROBE_TYPES:
        c.err(c.line(p, "type"), f"{where}: type must be http, tcp or exec")
        return None
    probe = common_pb2.Probe(type=PROBE_TYPES[typ])  # type: ignore[arg-type]
    if "port" in p:
        probe.port = _int(c, p["port"], f"{where}.port", c.line(p, "port"), 1, 65535)
    if typ == "http":
        if not p.get("path") or "port" not in p:
            c.err(p.line, f"{where}: http probes need 'path' and 'port'")
        probe.path = str(p.get("path") or "")
    elif typ == "tcp" and "port" not in p:
        c.err(p.line, f"{where}: tcp probes need 'port'")
    elif typ in ("exec", "command"):
        cmd = p.get("command")
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        if not cmd or not isinstance(cmd, list):
            c.err(p.line, f"{where}: exec probes need 'command'")
        else:
            probe.command.extend(str(x) for x in cmd)
    fields = {
        "initialDelaySeconds": "initial_delay_seconds",
        "intervalSeconds": "period_seconds",
        "periodSeconds": "period_seconds",
        "timeoutSeconds": "timeout_seconds",
        "failureThreshold": "failure_threshold",
        "successThreshold": "success_threshold",
    }
    for key, attr in fields.items():
        if key in p:
            setattr(probe, attr, _int(c, p[key], f"{where}.{key}", c.line(p, key), 0))
    return probe


def _env_from(c: _Ctx, raw: Any, line: int) -> list[Any]:
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


def _dependencies(c: _Ctx, raw: Any, ns: str, line: int) -> list[Any]:
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


def _mounts(c: _Ctx, raw: Any, kind: str, line: int) -> list[Any]:
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


def _service(c: _Ctx, spec: Any, ns_override: str | None) -> Any | None:
    from rune.api import common_pb2, service_pb2

    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "service must be a mapping")
        return None
    c.keys(spec, SERVICE_KEYS, "service")
    if spec.get("skip"):
        return None
    name = _name(c, spec, "service")
    ns = ns_override or str(spec.get("namespace") or "default")
    svc = service_pb2.Service(name=name, namespace=ns)
    runtime = str(spec.get("runtime") or ("process" if "process" in spec else "container"))
    if runtime not in ("container", "process"):
        c.err(c.line(spec, "runtime"), f"service '{name}': runtime must be 'container' or 'process'")
    svc.runtime = runtime
    if runtime == "container" and not spec.get("image"):
        c.err(spec.line, f"service '{name}': 'image' is required (or use runtime: process)")
    if spec.get("image"):
        svc.image = str(spec["image"])
    if runtime == "process":
        proc = spec.get("process")
        if not isinstance(proc, LineDict) or not proc.get("command"):
            c.err(c.line(spec, "process"), f"service '{name}': runtime process needs 'process.command'")
        else:
            c.keys(proc, PROCESS_KEYS, "process")
            cmd = proc["command"]
            args = [str(a) for a in (proc.get("args") or [])]
            if isinstance(cmd, list):
                cmd, args = str(cmd[0]), [str(a) for a in cmd[1:]] + args
            svc.process.command = str(cmd)
            svc.process.args.extend(args)
            svc.process.working_dir = str(proc.get("workingDir") or "")
            sc = proc.get("securityContext")
            if isinstance(sc, LineDict):
                c.keys(sc, SECURITY_KEYS, "securityContext")
                svc.process.security_context.user = str(sc.get("user") or "")
                svc.process.security_context.group = str(sc.get("group") or "")
                svc.process.security_context.read_only_fs = bool(sc.get("readOnlyFs"))
                svc.process.security_context.capabilities.extend(str(x) for x in sc.get("capabilities") or [])
    if "restartPolicy" in spec:
        rp = str(spec["restartPolicy"]).replace("_", "").lower()
        if rp not in RESTART_POLICIES:
            c.err(c.line(spec, "restartPolicy"), f"service '{name}': restartPolicy must be Always, OnFailure or Never")
        else:
            svc.restart_policy = RESTART_POLICIES[rp]  # type: ignore[assignment]
    if "command" in spec:
        cmd = spec["command"]
        svc.command = " ".join(str(x) for x in cmd) if isinstance(cmd, list) else str(cmd)
    svc.args.extend(str(a) for a in spec.get("args") or [])
    svc.labels.update(_str_map(c, spec.get("labels"), "labels", c.line(spec, "labels")))
    env = _str_map(c, spec.get("env"), "env", c.line(spec, "env"))
    for k in env:
        if not ENV_KEY.match(k):
            c.err(c.line(spec, "env"), f"service '{name}': env name '{k}' is not a valid variable name")
    svc.env.update(env)
    if "envFrom" in spec:
        svc.env_from.extend(_env_from(c, spec["envFrom"], c.line(spec, "envFrom")))
    svc.scale = _int(c, spec.get("scale", 1), "scale", c.line(spec, "scale"), 0) if "scale" in spec else 1
    ports: list[str] = []
    for p in spec.get("ports") or []:
        if not isinstance(p, LineDict):
            c.err(c.line(spec, "ports"), "ports items must be mappings")
            continue
        c.keys(p, PORT_KEYS, "port")
        if not p.get("name"):
            c.err(p.line, "port: 'name' is required")
        port = _int(c, p.get("port"), "port", c.line(p, "port"), 1, 65535)
        target = _int(c, p["targetPort"], "targetPort", c.line(p, "targetPort"), 1, 65535) if "targetPort" in p else 0
        proto = str(p.get("protocol") or "TCP").upper()
        svc.ports.add(name=str(p.get("name") or ""), port=port, target_port=target, protocol=proto)
        if proto == "TCP":
            ports += [str(p.get("name")), str(port)]
    res = spec.get("resources")
    if isinstance(res, LineDict):
        c.keys(res, {"cpu", "memory"}, "resources")
        for kind in ("cpu", "memory"):
            r = res.get(kind)
            if isinstance(r, LineDict):
                c.keys(r, {"request", "limit"}, f"resources.{kind}")
                getattr(svc.resources, kind).request = str(r.get("request") or "")
                getattr(svc.resources, kind).limit = str(r.get("limit") or "")
    health = spec.get("health")
    if isinstance(health, LineDict):
        c.keys(health, {"liveness", "readiness"}, "health")
        for kind in ("liveness", "readiness"):
            if kind in health:
                probe = _probe(c, health[kind], f"health.{kind}")
                if probe is not None:
                    getattr(svc.health, kind).CopyFrom(probe)
    exp = spec.get("expose")
    if isinstance(exp, LineDict):
        c.keys(exp, {"port", "host", "hostPort", "path", "tls"}, "expose")
        port_ref = str(exp.get("port") or "")
        if port_ref and port_ref not in ports:
            c.err(c.line(exp, "port"), f"service '{name}': expose.port '{port_ref}' is not a declared TCP port")
        host_port = _int(c, exp["hostPort"], "hostPort", c.line(exp, "hostPort"), 1, 65535) if "hostPort" in exp else 0
        svc.expose.CopyFrom(
            common_pb2.ServiceExpose(
                port=port_ref, host=str(exp.get("host") or ""), host_port=host_port, path=str(exp.get("path") or "")
            )
        )
    if "secretMounts" in spec:
        svc.secret_mounts.extend(_mounts(c, spec["secretMounts"], "secret", c.line(spec, "secretMounts")))
    for key in ("configmapMounts", "configMounts"):
        if key in spec:
            svc.configmap_mounts.extend(_mounts(c, spec[key], "configmap", c.line(spec, key)))
    if "dependencies" in spec:
        svc.dependencies.extend(_dependencies(c, spec["dependencies"], ns, c.line(spec, "dependencies")))
    return svc


def parse_text(text: str, filename: str = "<input>", namespace: str | None = None) -> Cast:
    """Parse one cast document set; raises :class:`CastErrors` listing every problem."""
    c = _Ctx(filename)
    protected, saved = _protect(text)
    try:
        docs = [_restore(d, saved) for d in yaml.load_all(protected, Loader=_Loader)]  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(e, "problem", None) or str(e)
        raise CastErrors([f"{filename}:{line}: not valid YAML: {problem}"]) from e
    cast = Cast()
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, LineDict):
            c.err(getattr(doc, "line", 1), "a cast file must be a mapping with service(s), secret(s), configmap(s)")
            continue
        for key, value in doc.items():
            line = doc.key_lines.get(key, doc.line)
            if key not in TOP_KEYS:
                c.err(line, f"unknown top-level key '{key}' (expected one of {', '.join(TOP_KEYS)})")
                continue
            plural = key.endswith("s")
            specs = value if plural else [value]
            if plural and not isinstance(value, list):
                c.err(line, f"'{key}' must be a list")
                continue
            for spec in specs:
                if key.startswith("service"):
                    obj = _service(c, spec, namespace)
                    if obj is not None:
                        cast.services.append(obj)
                        cast.warnings += [
                            f"{filename}:{spec.key_lines[k]}: '{k}' is accepted but not applied by runed"
                            for k in UNTRANSPORTED
                            if k in spec
                        ]
                elif key.startswith("secret"):
                    obj = _secret(c, spec, namespace)
                    if obj is not None:
                        cast.secrets.append(obj)
                else:
                    obj = _configmap(c, spec, namespace)
                    if obj is not None:
                        cast.configmaps.append(obj)
    if c.problems:
        raise CastErrors(c.problems)
    return cast


def collect_files(paths: list[str], recursive: bool = False) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files (sorted)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            out += sorted(f for f in p.glob(pattern) if f.suffix in (".yaml", ".yml") and f.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise CliError(f"{raw}: no such file or directory", EXIT_INVALID)
    return out


def parse_files(paths: list[Path], namespace: str | None = None) -> Cast:
    """Parse many files, reporting the problems of all of them together."""
    cast, problems = Cast(), []
    for p in paths:
        try:
            cast.extend(parse_text(p.read_text(), str(p), namespace))
        except CastErrors as e:
            problems += e.problems
    if problems:
        raise CastErrors(problems)
    return cast


def dependency_cycles(services: list[Any]) -> list[list[str]]:
    """Service dependency cycles among ``services`` (as ``ns/name`` paths)."""
    graph: dict[str, list[str]] = {}
    for s in services:
        key = f"{s.namespace}/{s.name}"
        graph[key] = [f"{d.namespace or s.namespace}/{d.service}" for d in s.dependencies if d.service]
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                cycles.append([*stack[stack.index(m) :], m])
            elif m in graph and not state.get(m):
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n)
    return cycles

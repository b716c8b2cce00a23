"""Services in a cast file: every field checked (with its line) and turned into a ``Service`` message.

Beyond the upstream format, services may say ``runtime: process`` with a ``process`` block and a
``restartPolicy``; ``configmapMounts`` and ``configMounts`` are both accepted.
"""

from __future__ import annotations

import re
from typing import Any

from rune.cli.castfile import refs
from rune.cli.castfile.checks import Problems, integer, object_name, str_map
from rune.cli.castfile.lines import LineDict

SERVICE_KEYS = {
    "name", "namespace", "labels", "image", "command", "args", "env", "envFrom", "scale", "ports",
    "resources", "health", "networkPolicy", "expose", "affinity", "autoscale", "secretMounts",
    "configMounts", "configmapMounts", "discovery", "imageRegistry", "registry", "skip", "dependencies",
    "runtime", "process", "restartPolicy",
}  # fmt: skip
# Accepted for compatibility with upstream cast files but not carried by the API.
UNTRANSPORTED = ("networkPolicy", "affinity", "autoscale", "discovery", "imageRegistry", "registry")
PORT_KEYS = {"name", "port", "targetPort", "protocol"}
PROBE_KEYS = {
    "type", "path", "port", "command", "initialDelaySeconds", "intervalSeconds", "periodSeconds",
    "timeoutSeconds", "failureThreshold", "successThreshold",
}  # fmt: skip
PROCESS_KEYS = {"command", "args", "workingDir", "securityContext"}
SECURITY_KEYS = {"user", "group", "readOnlyFs", "capabilities", "allowedSyscalls", "deniedSyscalls"}
RESTART_POLICIES = {"always": 1, "onfailure": 2, "on-failure": 2, "never": 3}
PROBE_TYPES = {"http": 1, "tcp": 2, "exec": 3, "command": 3}
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _probe(c: Problems, p: Any, where: str) -> Any | None:
    """A ``common_pb2.Probe`` for ``health.liveness``/``health.readiness``, or None."""
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
        probe.port = integer(c, p["port"], f"{where}.port", c.line(p, "port"), 1, 65535)
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
            setattr(probe, attr, integer(c, p[key], f"{where}.{key}", c.line(p, key), 0))
    return probe


def service(c: Problems, spec: Any, ns_override: str | None) -> Any | None:
    """A ``service_pb2.Service``, or None when skipped or not a mapping."""
    from rune.api import common_pb2, service_pb2

    if not isinstance(spec, LineDict):
        c.err(getattr(spec, "line", 0), "service must be a mapping")
        return None
    c.keys(spec, SERVICE_KEYS, "service")
    if spec.get("skip"):
        return None
    name = object_name(c, spec, "service")
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
        # Its unknown keys first: a misspelt command is the likeliest reason it has none.
        c.keys(proc, PROCESS_KEYS, "process")
        if not isinstance(proc, LineDict) or not proc.get("command"):
            c.err(c.line(spec, "process"), f"service '{name}': runtime process needs 'process.command'")
        else:
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
    svc.labels.update(str_map(c, spec.get("labels"), "labels", c.line(spec, "labels")))
    env = str_map(c, spec.get("env"), "env", c.line(spec, "env"))
    for k in env:
        if not ENV_KEY.match(k):
            c.err(c.line(spec, "env"), f"service '{name}': env name '{k}' is not a valid variable name")
    svc.env.update(env)
    if "envFrom" in spec:
        svc.env_from.extend(refs.env_from(c, spec["envFrom"], c.line(spec, "envFrom")))
    svc.scale = integer(c, spec.get("scale", 1), "scale", c.line(spec, "scale"), 0) if "scale" in spec else 1
    ports: list[str] = []
    for p in spec.get("ports") or []:
        if not isinstance(p, LineDict):
            c.err(c.line(spec, "ports"), "ports items must be mappings")
            continue
        c.keys(p, PORT_KEYS, "port")
        if not p.get("name"):
            c.err(p.line, "port: 'name' is required")
        port = integer(c, p.get("port"), "port", c.line(p, "port"), 1, 65535)
        target = (
            integer(c, p["targetPort"], "targetPort", c.line(p, "targetPort"), 1, 65535) if "targetPort" in p else 0
        )
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
        host_port = (
            integer(c, exp["hostPort"], "hostPort", c.line(exp, "hostPort"), 1, 65535) if "hostPort" in exp else 0
        )
        svc.expose.CopyFrom(
            common_pb2.ServiceExpose(
                port=port_ref, host=str(exp.get("host") or ""), host_port=host_port, path=str(exp.get("path") or "")
            )
        )
    if "secretMounts" in spec:
        svc.secret_mounts.extend(refs.mounts(c, spec["secretMounts"], "secret", c.line(spec, "secretMounts")))
    for key in ("configmapMounts", "configMounts"):
        if key in spec:
            svc.configmap_mounts.extend(refs.mounts(c, spec[key], "configmap", c.line(spec, key)))
    if "dependencies" in spec:
        svc.dependencies.extend(refs.dependencies(c, spec["dependencies"], ns, c.line(spec, "dependencies")))
    return svc

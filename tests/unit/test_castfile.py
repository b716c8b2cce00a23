"""Cast file parsing: keys checked with file and line, conversion to API messages, every error at once."""

from __future__ import annotations

import pytest

from rune.api import common_pb2
from rune.cli.castfile import CastErrors, dependency_cycles, parse_text


def problems(text: str) -> list[str]:
    with pytest.raises(CastErrors) as e:
        parse_text(text, "app.yaml")
    return e.value.problems


def test_full_service_converts_to_proto() -> None:
    cast = parse_text(
        """
service:
  name: web
  image: nginx:1.27
  command: /bin/serve
  args: [--port, "8080"]
  scale: 3
  labels: {app: shop}
  env:
    MODE: prod
    PASSWORD: {{secret:db/password}}
  envFrom:
    - configmap: web-config
      prefix: CFG_
    - secret:creds.other.rune
  ports:
    - {name: http, port: 8080, targetPort: 80}
  expose: {port: http, hostPort: 18080}
  resources:
    cpu: {request: 100m, limit: "1"}
    memory: {request: 64Mi, limit: 128Mi}
  health:
    liveness: {type: http, path: /healthz, port: 8080, intervalSeconds: 5, failureThreshold: 2}
    readiness: {type: exec, command: [test, -f, /ready]}
  secretMounts:
    - {name: tls, mountPath: /etc/tls, items: [{key: crt, path: tls.crt}]}
  configMounts:
    - {name: web-config, mountPath: /etc/web}
  dependencies:
    - db
    - cache.shared
    - secret:creds
    - {configmap: web-config}
"""
    )
    (svc,) = cast.services
    assert (svc.name, svc.namespace, svc.image, svc.scale, svc.runtime) == (
        "web",
        "default",
        "nginx:1.27",
        3,
        "container",
    )
    assert svc.command == "/bin/serve" and list(svc.args) == ["--port", "8080"]
    assert svc.env["PASSWORD"] == "{{secret:db/password}}"
    assert svc.env_from[0].configmap_name == "web-config" and svc.env_from[0].prefix == "CFG_"
    assert (svc.env_from[1].secret_name, svc.env_from[1].namespace) == ("creds", "other")
    assert svc.ports[0].target_port == 80 and svc.ports[0].protocol == "TCP"
    assert svc.expose.port == "http" and svc.expose.host_port == 18080
    assert svc.resources.memory.limit == "128Mi"
    assert svc.health.liveness.type == common_pb2.PROBE_TYPE_HTTP and svc.health.liveness.period_seconds == 5
    assert svc.health.liveness.failure_threshold == 2
    assert svc.health.readiness.type == common_pb2.PROBE_TYPE_COMMAND
    assert list(svc.health.readiness.command) == ["test", "-f", "/ready"]
    assert svc.secret_mounts[0].items[0].path == "tls.crt"
    assert svc.configmap_mounts[0].mount_path == "/etc/web"
    deps = [(d.service, d.secret, d.configmap, d.namespace) for d in svc.dependencies]
    assert deps == [
        ("db", "", "", "default"),
        ("cache", "", "", "shared"),
        ("", "creds", "", "default"),
        ("", "", "web-config", "default"),
    ]


def test_process_runtime_and_restart_policy() -> None:
    cast = parse_text(
        """
service:
  name: worker
  namespace: jobs
  process:
    command: [python3, -m, worker]
    args: [--fast]
    workingDir: /srv
    securityContext: {user: nobody}
  restartPolicy: OnFailure
"""
    )
    (svc,) = cast.services
    assert svc.runtime == "process" and svc.namespace == "jobs" and svc.scale == 1
    assert svc.process.command == "python3" and list(svc.process.args) == ["-m", "worker", "--fast"]
    assert svc.process.working_dir == "/srv" and svc.process.security_context.user == "nobody"
    assert svc.restart_policy == common_pb2.RESTART_POLICY_ON_FAILURE


def test_secrets_and_configmaps_with_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PW", "hunter2")
    cast = parse_text(
        """
secrets:
  - name: db
    data: {password: $DB_PW, url: "postgres://u:${DB_PW}@db"}
  - name: single
    value: plain
configmap:
  name: cfg
  data:
    - {key: a, value: 1}
---
configmap: {name: other, data: {b: two}}
"""
    )
    assert dict(cast.secrets[0].data) == {"password": "hunter2", "url": "postgres://u:hunter2@db"}
    assert dict(cast.secrets[1].data) == {"value": "plain"} and cast.secrets[1].type == "static"
    assert [dict(c.data) for c in cast.configmaps] == [{"a": "1"}, {"b": "two"}]


def test_namespace_override_and_skip() -> None:
    cast = parse_text(
        "services:\n  - {name: a, image: x, namespace: one}\n  - {name: b, image: x, skip: true}\n", namespace="two"
    )
    assert [(s.name, s.namespace) for s in cast.services] == [("a", "two")]


def test_unknown_keys_reported_with_lines_all_at_once() -> None:
    found = problems(
        """service:
  name: web
  image: nginx
  replicas: 2
  ports:
    - {name: http, port: 80, proto: TCP}
  health:
    liveness: {type: http, path: /, port: 80, every: 5}
extras: true
"""
    )
    assert "app.yaml:4: unknown field 'replicas' in service" in found
    # A close known field is suggested (as runed's own errors do), none for a word like no field.
    assert "app.yaml:6: unknown field 'proto' in port (did you mean \"protocol\"?)" in found, found
    assert "app.yaml:8: unknown field 'every' in health.liveness" in found
    assert any(p.startswith("app.yaml:9: unknown top-level key 'extras'") for p in found)


def test_a_misspelt_process_command_is_named_beside_the_missing_one() -> None:
    found = problems(
        """service:
  name: job
  runtime: process
  process:
    comand: sleep
"""
    )
    assert "app.yaml:5: unknown field 'comand' in process (did you mean \"command\"?)" in found, found
    assert "app.yaml:4: service 'job': runtime process needs 'process.command'" in found, found


def test_semantic_errors() -> None:
    found = problems(
        """services:
  - name: Web_1
    scale: -1
    ports: [{name: http, port: 70000}]
    expose: {port: grpc}
    restartPolicy: Sometimes
    health: {liveness: {type: http}}
  - name: proc
    runtime: process
secret: {name: s}
configmap: {name: c, data: {}}
"""
    )
    text = "\n".join(found)
    for needle in (
        "service name 'Web_1' must be lowercase",
        "'image' is required",
        "scale must be >= 0",
        "port must be between 1 and 65535",
        "expose.port 'grpc' is not a declared TCP port",
        "restartPolicy must be Always, OnFailure or Never",
        "http probes need 'path' and 'port'",
        "runtime process needs 'process.command'",
        "a static secret needs 'data', 'value' or 'valueBase64'",
        "configmap 'c': 'data' must not be empty",
    ):
        assert needle in text, needle


def test_invalid_yaml_reports_line() -> None:
    (p,) = problems("service:\n  name: web\n  image: [oops\n")
    assert p.startswith("app.yaml:") and "not valid YAML" in p


def test_top_level_must_be_mapping_and_plurals_lists() -> None:
    assert "must be a mapping" in problems("- a\n- b\n")[0]
    assert "'services' must be a list" in problems("services: {name: a}\n")[0]


def test_dependency_cycles() -> None:
    cast = parse_text(
        "services:\n"
        "  - {name: a, image: x, dependencies: [b]}\n"
        "  - {name: b, image: x, dependencies: [c]}\n"
        "  - {name: c, image: x, dependencies: [a]}\n"
        "  - {name: d, image: x, dependencies: [a]}\n"
    )
    (cycle,) = dependency_cycles(cast.services)
    assert cycle == ["default/a", "default/b", "default/c", "default/a"]

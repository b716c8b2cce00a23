"""Secret and configmap mounts: in the instance's own directory while it runs, gone once it stops, exits or goes."""

from __future__ import annotations

import hashlib
import stat
import textwrap
import uuid
from pathlib import Path
from typing import Any

from rune.api import (
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
)
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import eventually, file_contents

# Finds its mounts where RUNE_MOUNTS_DIR says; prints a digest of the secret (never the secret itself).
READER = textwrap.dedent(
    """
    import hashlib, os, sys, time
    root = os.environ["RUNE_MOUNTS_DIR"]
    token = open(root + sys.argv[1] + "/token", "rb").read()
    mode = open(root + sys.argv[2] + "/mode").read()
    print("read", hashlib.sha256(token).hexdigest(), mode, flush=True)
    time.sleep(float(sys.argv[3]))
    """
)


def _cast_reader(orch: Orch, name: str, secret_value: str, config_value: str, seconds: float, **kw: Any) -> Path:
    """A secret and a configmap named after the service, and the service mounting both; returns the
    host directory the mount paths name (under the test's tmp, so code that writes there harms nothing)."""
    secret_pb2_grpc.SecretServiceStub(orch.runed.channel()).CreateSecret(
        secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(name=name, namespace="default", data={"token": secret_value})
        ),
        metadata=orch.auth,
    )
    configmap_pb2_grpc.ConfigmapServiceStub(orch.runed.channel()).CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(
            configmap=configmap_pb2.Configmap(name=name, namespace="default", data={"mode": config_value})
        ),
        metadata=orch.auth,
    )
    host = orch.tmp / f"host-{name}"
    orch.cast(
        name,
        orch.program("reader", READER),
        f"{host}/secret",
        f"{host}/conf",
        str(seconds),
        secret_mounts=[service_pb2.SecretMount(name="vault", secret_name=name, mount_path=f"{host}/secret")],
        configmap_mounts=[service_pb2.ConfigmapMount(name="conf", configmap_name=name, mount_path=f"{host}/conf")],
        **kw,
    )
    return host


def _plaintext_under(root: Path, value: str) -> list[Path]:
    """Every file under ``root`` holding ``value`` as it is."""
    return [path for path, data in file_contents(root) if value.encode() in data]


def _one(orch: Orch, service: str, state: str) -> dict[str, Any]:
    insts = orch.instances(service)
    assert [i["state"] for i in insts] == [state], [(i["state"], i.get("reason")) for i in insts]
    return insts[0]


def test_mounts_live_in_the_instance_dir_and_leave_with_it(orch: Orch) -> None:
    secret_value = "vault-" + uuid.uuid4().hex
    host = _cast_reader(orch, "vault-user", secret_value, "fast", 3600)
    inst = eventually(lambda: orch.running("vault-user", 1), timeout=15)[0]
    root = Path(inst["env"]["RUNE_MOUNTS_DIR"])
    assert root.is_relative_to(Path(inst["log_dir"])), "mounts are placed in the instance's own directory"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    # The mount path is the path the instance sees: placed under its RUNE_MOUNTS_DIR.
    token = root / str(host).lstrip("/") / "secret" / "token"
    assert token.read_text() == secret_value and stat.S_IMODE(token.stat().st_mode) == 0o400
    assert _plaintext_under(orch.tmp, secret_value) == [token], "sanity: the walk sees the mounted file"
    assert (root / str(host).lstrip("/") / "conf" / "mode").read_text() == "fast"
    # The process found both through RUNE_MOUNTS_DIR.
    digest = hashlib.sha256(secret_value.encode()).hexdigest()
    eventually(lambda: f"read {digest} fast" in orch.log_lines(inst), what="the instance read its mounts")
    assert not host.exists(), "nothing is written at the host path itself"

    instances = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    instances.StopInstance(instance_pb2.InstanceActionRequest(id="vault-user-0", timeout_seconds=2), metadata=orch.auth)
    eventually(lambda: _one(orch, "vault-user", "STOPPED"), timeout=15)
    assert not root.exists(), "a stopped instance keeps no mount files"
    assert _plaintext_under(orch.tmp, secret_value) == []

    instances.StartInstance(instance_pb2.InstanceActionRequest(id="vault-user-0"), metadata=orch.auth)
    eventually(lambda: orch.running("vault-user", 1), timeout=15)
    eventually(lambda: token.read_text() == secret_value, what="mounts written again on start")

    orch.services.DeleteService(service_pb2.DeleteServiceRequest(name="vault-user", now=True), metadata=orch.auth)
    eventually(lambda: orch.instances("vault-user") == [], timeout=15)
    assert not root.exists()
    assert _plaintext_under(orch.tmp, secret_value) == []


def test_mounts_of_an_exited_instance_are_removed(orch: Orch) -> None:
    secret_value = "exit-" + uuid.uuid4().hex
    _cast_reader(orch, "one-shot", secret_value, "slow", 0, restart_policy=common_pb2.RESTART_POLICY_NEVER)
    inst = eventually(lambda: _one(orch, "one-shot", "EXITED"), timeout=15)
    assert inst["last_exit_code"] == 0, orch.log_lines(inst)
    assert not (Path(inst["log_dir"]) / "mounts").exists()
    assert _plaintext_under(orch.tmp, secret_value) == []


def test_host_mount_paths_are_an_operator_opt_in_removed_with_the_last_instance(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    args = runefile_args(tmp_path, f"  host_mount_paths: [{shared}]\n")
    orch = Orch.on(runed_factory(tmp_path / "data", args=args), tmp_path)
    secret_value = "host-" + uuid.uuid4().hex
    host = tmp_path / "host-pair"
    secret_pb2_grpc.SecretServiceStub(orch.runed.channel()).CreateSecret(
        secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="pair", data={"token": secret_value})),
        metadata=orch.auth,
    )
    orch.cast(
        "pair",
        orch.program("sleeper", "import time; time.sleep(3600)"),
        scale=2,
        secret_mounts=[
            service_pb2.SecretMount(name="in", secret_name="pair", mount_path=f"{shared}/app"),
            service_pb2.SecretMount(name="out", secret_name="pair", mount_path=f"{host}/app"),
        ],
    )
    insts = eventually(lambda: orch.running("pair", 2), timeout=15)
    token = shared / "app" / "token"
    assert token.read_text() == secret_value, "an allowed host path is written as it is"
    assert not host.exists(), "a path outside host_mount_paths stays in the instance's directory"
    instances = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    instances.StopInstance(instance_pb2.InstanceActionRequest(id="pair-0", timeout_seconds=2), metadata=orch.auth)
    eventually(lambda: [i["state"] for i in orch.instances("pair")] == ["STOPPED", "RUNNING"], timeout=15)
    assert not (Path(insts[0]["env"]["RUNE_MOUNTS_DIR"])).exists()
    assert token.read_text() == secret_value, "pair-1 still runs and reads the shared file"
    orch.services.DeleteService(service_pb2.DeleteServiceRequest(name="pair", now=True), metadata=orch.auth)
    eventually(lambda: orch.instances("pair") == [], timeout=15)
    assert not token.exists(), "the last instance to go removes the shared files"
    assert _plaintext_under(tmp_path, secret_value) == []

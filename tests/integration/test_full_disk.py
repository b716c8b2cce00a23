"""A full data disk: reads go on, writes fail with RESOURCE_EXHAUSTED naming the data dir, logs keep a floor.

Everything recovers when space returns. The data dir is a real 40 MB tmpfs (mounted here, so the
tests need root and skip without it), filled by a chatty service's logs and then by a filler file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from rune.api import instance_pb2, secret_pb2, secret_pb2_grpc, service_pb2, service_pb2_grpc
from runed.server.ballast import BALLAST_NAME
from tests.harness import Runed, run_runed
from tests.integration.orch import Orch, runefile_args
from tests.support import Metadata, alive, bootstrap_metadata, code_of, eventually

MB = 1024 * 1024
FLOOR = 8 * MB  # controller.log_min_free_bytes for these runeds
# Prints 1000-character lines in bursts, forever.
CHATTY = textwrap.dedent(
    """
    import sys, time
    line = "x" * 1000 + "\\n"
    while True:
        sys.stdout.write(line * 1000)
        sys.stdout.flush()
        time.sleep(0.02)
    """
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs mounted at ``tmp_path/data`` (unmounted afterwards)."""
    data = tmp_path / "data"
    data.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(data)], capture_output=True, text=True, timeout=10
        )
    except OSError as e:
        pytest.skip(f"cannot run mount: {e}")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=10)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, name: str, limit: int | None = None) -> Path:
    """Write zeros into ``path/name`` until the filesystem is full (or ``limit`` bytes are written)."""
    filler = path / name
    chunk = b"\0" * 65536
    written = 0
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while limit is None or written < limit:
                written += f.write(chunk[: (limit - written) if limit is not None else None]) or 0
    if limit is not None:
        assert written == limit
    return filler


def role_pids(r: Runed) -> dict[str, int]:
    """The pid each role announced in its ready marker."""
    run = r.data_dir / "run"
    return {p.stem: int(json.loads(p.read_text())["pid"]) for p in run.glob("*.json")}


def secret_request(name: str) -> secret_pb2.CreateSecretRequest:
    return secret_pb2.CreateSecretRequest(
        secret=secret_pb2.Secret(name=name, namespace="default", type="static", data={"k": "v"})
    )


def rest_client(r: Runed, auth: Metadata) -> httpx.Client:
    return httpx.Client(base_url=r.http_base, headers={"authorization": auth[0][1]}, timeout=10)


def log_lines(log_dir: Path) -> list[str]:
    """Every line of an instance's log files (rotated ones included)."""
    out: list[str] = []
    for p in log_dir.glob("log.jsonl*"):
        for raw in p.read_bytes().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                out.append(str(json.loads(raw)["line"]))
    return out


def assert_reads_served(r: Runed, auth: Metadata, rest: httpx.Client, service: str | None = None) -> None:
    """Gets and lists over gRPC and REST answer (the first calls of these methods in the roles)."""
    secrets = secret_pb2_grpc.SecretServiceStub(r.channel())
    assert code_of(secrets.ListSecrets, secret_pb2.ListSecretsRequest(namespace="default"), metadata=auth)[0] == (
        grpc.StatusCode.OK
    )
    assert rest.get("/v1/namespaces/default/secrets").status_code == 200
    assert rest.get("/v1/namespaces/default/services").status_code == 200
    if service:
        services = service_pb2_grpc.ServiceServiceStub(r.channel())
        got = services.GetService(service_pb2.GetServiceRequest(name=service, namespace="default"), metadata=auth)
        assert got.service.name == service
        listed = services.ListInstances(
            instance_pb2.ListInstancesRequest(service_name=service, namespace="default"), metadata=auth
        )
        assert len(listed.instances) == 1
        assert rest.get(f"/v1/namespaces/default/services/{service}").status_code == 200
        assert rest.get(f"/v1/namespaces/default/services/{service}/instances").status_code == 200


def assert_writes_refused(r: Runed, auth: Metadata, rest: httpx.Client, name: str) -> None:
    """A write fails with RESOURCE_EXHAUSTED naming the data dir: gRPC status, and REST 429 with the JSON error."""
    secrets = secret_pb2_grpc.SecretServiceStub(r.channel())
    code, details = code_of(secrets.CreateSecret, secret_request(name), metadata=auth)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert str(r.data_dir) in details and "space" in details
    resp = rest.post("/v1/namespaces/default/secrets", json={"name": name, "type": "static", "data": {"k": "v"}})
    assert resp.status_code == 429, resp.text
    body = resp.json()
    assert body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert str(r.data_dir) in body["message"]


def test_a_chatty_service_cannot_take_the_api_down(small_disk: Path, tmp_path: Path) -> None:
    args = runefile_args(tmp_path, f"  log_min_free_bytes: {FLOOR}\n")
    with run_runed(small_disk, args=args) as r:
        o = Orch.on(r, tmp_path)
        # Most of the disk is taken already (and given back at the end): the logs fill the last 4 MB.
        spare = fill(small_disk, "spare", limit=(free(small_disk) - FLOOR - 4 * MB) // 65536 * 65536)
        o.cast("chatty", o.program("chatty", CHATTY))
        # Its logs stop at the floor: the disk is not filled by them.
        eventually(lambda: free(small_disk) < FLOOR + MB, timeout=30, what="the chatty logs reach the floor")
        assert free(small_disk) > FLOOR - MB
        log_dir = Path(o.instances("chatty")[0]["log_dir"])
        roles = role_pids(r)

        # Something else fills what is left.
        filler = fill(small_disk, "filler")
        assert free(small_disk) < 64 * 1024
        with rest_client(r, o.auth) as rest:
            assert_reads_served(r, o.auth, rest, service="chatty")
            assert_writes_refused(r, o.auth, rest, "while-full")
            assert_reads_served(r, o.auth, rest, service="chatty")
            # The roles that answered are the ones that were serving before (none died, none restarted).
            assert role_pids(r) == roles and all(alive(pid) for pid in roles.values())

            # Space returns: writes succeed, the logs resume and say what they dropped.
            filler.unlink()
            spare.unlink()
            secrets = secret_pb2_grpc.SecretServiceStub(r.channel())
            assert code_of(secrets.CreateSecret, secret_request("after-grpc"), metadata=o.auth)[0] == grpc.StatusCode.OK
            resp = rest.post(
                "/v1/namespaces/default/secrets", json={"name": "after-rest", "type": "static", "data": {"k": "v"}}
            )
            assert resp.status_code == 200, resp.text

        def marker() -> bool:
            dropped = [line for line in log_lines(log_dir) if "lines dropped" in line]
            assert dropped, "no drop marker in the log"
            return True

        eventually(marker, timeout=15, what="the log says how many lines were dropped")

        # The API stops the chatty service.
        o.services.DeleteService(
            service_pb2.DeleteServiceRequest(name="chatty", namespace="default", now=True), metadata=o.auth
        )
        eventually(lambda: not o.instances("chatty"), timeout=20, what="the chatty service stopped")
        assert role_pids(r) == roles


def test_runed_starts_and_serves_reads_on_a_full_disk(small_disk: Path, tmp_path: Path) -> None:
    args = runefile_args(tmp_path, f"  log_min_free_bytes: {FLOOR}\n")
    with run_runed(small_disk, args=args) as r:
        auth = bootstrap_metadata(r.channel())
        secrets = secret_pb2_grpc.SecretServiceStub(r.channel())
        secrets.CreateSecret(secret_request("kept"), metadata=auth)
        assert (small_disk / BALLAST_NAME).exists()

    filler = fill(small_disk, "filler")
    assert free(small_disk) < 64 * 1024
    # Not "data dir not writable": only space is short. The start spends the ballast on what it writes.
    with run_runed(small_disk, args=args) as r, rest_client(r, auth) as rest:
        assert not (small_disk / BALLAST_NAME).exists()
        secrets = secret_pb2_grpc.SecretServiceStub(r.channel())
        got = secrets.GetSecret(secret_pb2.GetSecretRequest(name="kept", namespace="default"), metadata=auth)
        assert got.secret.data == {"k": "v"}
        assert_reads_served(r, auth, rest)
        roles = role_pids(r)
        more = fill(small_disk, "more")
        assert_writes_refused(r, auth, rest, "while-full")
        assert_reads_served(r, auth, rest)
        assert role_pids(r) == roles

        filler.unlink()
        more.unlink()
        assert code_of(secrets.CreateSecret, secret_request("after"), metadata=auth)[0] == grpc.StatusCode.OK
        # With room again the supervisor puts the ballast back.
        eventually(lambda: (small_disk / BALLAST_NAME).exists(), timeout=15, what="the ballast restored")


# Records calls of many methods (each a new key in the metric files) in a role-like process.
RECORD_METRICS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from runed.transport import metrics
    metrics.install(Path(sys.argv[1]), "rest")
    for i in range(300):
        metrics.record("grpc", f"/rune.api.Svc/Method{i}", "OK", 0.001)
    metrics.flush()
    print("recorded")
    """
)


def test_metrics_on_a_full_disk_do_not_kill_the_process(small_disk: Path) -> None:
    # prometheus-client grows its sparse mmap files and writes through the mapping: on a full
    # filesystem a store to an unallocated page is SIGBUS. A role process must survive it.
    fill(small_disk, "filler")
    done = subprocess.run(
        [sys.executable, "-c", RECORD_METRICS, str(small_disk)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "recorded" in done.stdout, (done.returncode, done.stderr[-2000:])

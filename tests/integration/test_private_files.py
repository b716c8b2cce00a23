"""runed's files are private: the data dir 0700 and what is in it 0600, instance logs included; instances keep the
umask runed was started with."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from rune.api import common_pb2, secret_pb2, secret_pb2_grpc, service_pb2
from tests.harness import run_runed
from tests.integration.orch import Orch
from tests.support import eventually

# Prints its umask, writes a file of its own in its working directory, then waits.
UMASK_PRINTER = """
import os, sys, time
mask = os.umask(0)
os.umask(mask)
open("made-by-instance", "w").close()
print(f"umask={mask:04o}", flush=True)
time.sleep(600)
"""


def _own_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_dir_and_files_are_private(orch: Orch) -> None:
    data = orch.runed.data_dir
    # The harness created the data dir with this process's umask (0755 as a rule); runed tightens it.
    assert _mode(data) == 0o700
    orch.cast("private", orch.program("umask_printer", UMASK_PRINTER))
    inst = eventually(lambda: orch.running("private", 1)[0], timeout=30)
    line = eventually(lambda: next((ln for ln in orch.log_lines(inst) if ln.startswith("umask=")), None))
    assert line == f"umask={_own_umask():04o}", "the instance runs with the umask runed inherited"

    log_dir = Path(inst["log_dir"])
    work = Path(inst.get("workdir") or log_dir / "work")
    for name in ("runed.db", "runed.db-wal", "runed.db-shm"):
        assert _mode(data / name) == 0o600, name
    assert _mode(log_dir / "log.jsonl") == 0o600
    # Everything runed, its roles and the shim wrote: no access for group or others.
    loose = []
    for root, dirs, files in os.walk(data):
        for name in dirs + files:
            path = Path(root, name)
            if path == work or work in path.parents:
                continue  # the instance's own files, made with its own umask
            if path.is_symlink() or stat.S_ISSOCK(path.lstat().st_mode):
                continue
            if _mode(path) & 0o077:
                loose.append(f"{oct(_mode(path))} {path.relative_to(data)}")
    assert not loose, loose
    made = work / "made-by-instance"
    assert _mode(made) == 0o666 & ~_own_umask()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_an_instance_running_as_another_user_reaches_its_mounts() -> None:
    """runed's private dirs let another user pass (search only) to its working dir and mounts, nothing more."""
    # pytest's temp dirs are 0700: this data dir sits where another user may pass, as a real one would.
    # The runed (and the instance) is stopped before the directory goes.
    with tempfile.TemporaryDirectory(prefix="runed-nobody-") as top:
        Path(top).chmod(0o711)
        with run_runed(Path(top) / "data") as r:
            _reach_mounts_as_nobody(Orch.on(r, Path(top)))


def _reach_mounts_as_nobody(orch: Orch) -> None:
    secret_pb2_grpc.SecretServiceStub(orch.runed.channel()).CreateSecret(
        secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="nobody-key", data={"token": "t0k3n"})),
        metadata=orch.auth,
    )
    svc = service_pb2.Service(
        name="as-nobody",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(
            command="/bin/sh",
            args=["-c", 'echo "token=$(cat "$RUNE_MOUNTS_DIR/keys/token")"; touch own-file && echo wrote; sleep 600'],
            security_context=common_pb2.ProcessSecurityContext(user="nobody"),
        ),
        secret_mounts=[service_pb2.SecretMount(name="k", secret_name="nobody-key", mount_path="/keys")],
    )
    orch.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=orch.auth)
    inst = eventually(lambda: orch.running("as-nobody", 1)[0], timeout=30)
    eventually(lambda: {"token=t0k3n", "wrote"} <= set(orch.log_lines(inst)), what="the instance read its mount")
    data = orch.runed.data_dir
    for path in (data, data / "instances", Path(inst["log_dir"])):
        assert _mode(path) & 0o066 == 0, f"{oct(_mode(path))} {path}"
    assert _mode(data / "runed.db") == 0o600

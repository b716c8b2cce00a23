"""An instance that cannot start on its configuration retries as soon as a secret or configmap changes."""

from __future__ import annotations

from pathlib import Path

from rune.api import secret_pb2, secret_pb2_grpc
from tests.harness import RunedFactory
from tests.integration.orch import EXITER, Orch
from tests.support import eventually

# A back-off far longer than the test waits: only the change of the secret can restart the instance.
RUNEFILE = """
controller:
  resync_seconds: 1
  restart_backoff_initial_seconds: 60
  restart_backoff_max_seconds: 60
"""


def test_a_missing_secret_key_retries_when_the_secret_changes(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text(RUNEFILE)
    orch = Orch.on(runed_factory(tmp_path / "data", args=["--config", str(cfg)]), tmp_path)
    secrets = secret_pb2_grpc.SecretServiceStub(orch.runed.channel())
    secret = secret_pb2.Secret(name="db", namespace="default", data={"user": "app"})
    secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret), metadata=orch.auth)
    orch.cast("needy", orch.program("sleeper", EXITER), "0", "600", env={"DB_PASS": "{{secret:db/password}}"})

    def waiting() -> dict[str, object]:
        found = orch.instances("needy")
        assert len(found) == 1, found
        (inst,) = found
        assert inst["state"] == "BACKOFF", (inst["state"], inst["reason"])
        assert str(inst["reason"]).startswith("CreateConfigError: "), inst["reason"]
        return inst

    eventually(waiting, timeout=30)
    secret.data["password"] = "s3cret"
    secrets.UpdateSecret(secret_pb2.UpdateSecretRequest(secret=secret), metadata=orch.auth)
    (inst,) = eventually(
        lambda: orch.running("needy", 1), timeout=30, what="restarted without waiting out the back-off"
    )
    assert inst["restart_count"] == 1

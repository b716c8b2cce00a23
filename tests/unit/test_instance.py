"""The controller's typed instance: its stored form, the round trip through a record, and its transitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from rune.api import common_pb2, service_pb2
from runed.controller.instance import AfterStop, Instance, ProbeResult
from runed.controller.states import InvalidTransition, State
from runed.runner.base import Handle
from runed.store.base import Record

# The keys the API, the CLI's tests and earlier controllers read from an instance record.
RECORD_KEYS = [
    "instance",
    "service",
    "index",
    "name",
    "runner",
    "generation",
    "spec_hash",
    "state",
    "pid",
    "pid_start",
    "shim_pid",
    "log_dir",
    "workdir",
    "env",
    "user",
    "uid",
    "gid",
    "ports",
    "ready",
    "live",
    "restart_count",
    "consecutive_failures",
    "last_exit_code",
    "last_signal",
    "reason",
    "next_restart_at",
    "restart_policy",
    "grace_seconds",
    "restart_seq_seen",
]
INFO_KEYS = [
    "id",
    "runner",
    "namespace",
    "name",
    "service_id",
    "service_name",
    "node_id",
    "ip",
    "created_at",
    "resources",
    "metadata",
    "status",
    "status_message",
    "pid",
    "updated_at",
]


def _new(tmp_path: Path) -> Instance:
    svc = service_pb2.Service(
        name="web",
        namespace="prod",
        runtime="process",
        restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE,
        resources=common_pb2.Resources(memory=common_pb2.ResourceLimit(request="256Mi", limit="512Mi")),
    )
    return Instance.new(svc, "prod", 3, 1, "iid-1", tmp_path / "iid-1")


def _record(inst: Instance) -> Record:
    return Record("instance", inst.namespace, inst.id, inst.to_record(), 1, 1)


def test_a_new_instance_is_stored_with_the_known_keys(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "Starting")
    data = inst.to_record()
    assert list(data) == RECORD_KEYS
    assert list(data["instance"]) == INFO_KEYS
    assert data["state"] == "STARTING" and data["instance"]["status"] == "INSTANCE_STATUS_STARTING"
    assert data["name"] == data["instance"]["name"] == "web-1"
    assert data["restart_policy"] == "RESTART_POLICY_ON_FAILURE"
    assert data["workdir"] == str(tmp_path / "iid-1" / "work")
    assert data["instance"]["metadata"] == {"generation": 3, "restart_count": 0}
    assert data["instance"]["resources"] == {"memory": {"request": "256Mi", "limit": "512Mi"}}


def test_backoff_is_shown_as_failed_with_its_reason(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "Starting")
    inst.transition(State.BACKOFF, "Restarting: exit code 1")
    data = inst.to_record()
    assert data["state"] == "BACKOFF" and data["instance"]["status"] == "INSTANCE_STATUS_FAILED"
    assert data["reason"] == data["instance"]["status_message"] == "Restarting: exit code 1"


def test_optional_keys_appear_only_once_set(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "CreateConfigError: secret db not found", config_error=True)
    inst.apply_handle(Handle(pid=42, pid_start=7, shim_pid=41, container_id="abc"))
    inst.after_stop = AfterStop.RESTART
    inst.retire = True
    inst.action_applied_at = 12.5
    inst.probes = {"readiness": ProbeResult(ok=True, last_ok=True, successes=1, failures=0, message="ok", ts=1.0)}
    data = inst.to_record()
    assert data["after_stop"] == "restart" and data["retire"] is True and data["config_error"] is True
    assert data["action_applied_at"] == 12.5
    assert data["probes"] == {
        "readiness": {"ok": True, "last_ok": True, "successes": 1, "failures": 0, "message": "ok", "ts": 1.0}
    }
    assert data["pid"] == data["instance"]["pid"] == 42 and data["instance"]["container_id"] == "abc"


def test_the_record_round_trips(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "Starting")
    inst.transition(State.RUNNING, "Running")
    inst.ports = {"http": 41234}
    inst.env = {"A": "1"}
    inst.apply_handle(Handle(pid=42, pid_start=7, shim_pid=41))
    inst.probes = {"liveness": ProbeResult(ok=False, last_ok=False, successes=0, failures=3, message="x", ts=2.0)}
    inst.next_restart_at = 99.5
    back = Instance.from_record(_record(inst))
    assert back == inst
    assert back.to_record() == inst.to_record()


def test_a_copy_does_not_share_what_it_changes(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.ports = {"http": 1}
    work = inst.copy()
    work.ports["http"] = 2
    work.env["X"] = "y"
    assert inst.ports == {"http": 1} and inst.env == {}
    assert work != inst


def test_transition_clears_ready_outside_running(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "Starting")
    inst.transition(State.RUNNING, "Running")
    inst.ready = True
    assert inst.transition(State.STOPPING, "Stopping") == (
        "stop requested (scale down, update, deletion, StopInstance, liveness failure)"
    )
    assert not inst.ready


def test_a_transition_outside_the_table_raises_and_changes_nothing(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    with pytest.raises(InvalidTransition):
        inst.transition(State.RUNNING, "Running")
    assert inst.state is State.NEW and inst.reason == ""


def test_the_config_error_flag_follows_the_reason(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "CreateConfigError: secret db not found", config_error=True)
    inst.transition(State.BACKOFF, "CreateConfigError: secret db not found; retrying in 1s", config_error=True)
    assert Instance.from_record(_record(inst)).config_error
    inst.transition(State.STARTING, "Restarting after back-off")
    assert not inst.config_error and "config_error" not in inst.to_record()


def test_a_record_of_an_unknown_state_is_refused(tmp_path: Path) -> None:
    data = _new(tmp_path).to_record()
    data["state"] = "DANCING"
    with pytest.raises(ValueError):
        Instance.from_record(Record("instance", "prod", "iid-1", data, 1, 1))


def test_the_run_start_is_kept_in_the_record_while_running(tmp_path: Path) -> None:
    inst = _new(tmp_path)
    inst.transition(State.STARTING, "Starting")
    assert inst.running_since is None and "running_since" not in inst.to_record()
    inst.transition(State.RUNNING, "Running")
    since = inst.running_since
    assert since is not None
    inst.apply_handle(Handle(pid=42, pid_start=7, shim_pid=41, shim_start=5))
    # A restarted controller reads when the run began (and how to recognise the shim).
    back = Instance.from_record(_record(inst))
    assert back.running_since == since and back.handle == Handle(pid=42, pid_start=7, shim_pid=41, shim_start=5)
    # Re-adoption keeps the run's start; the run ends with any other state.
    back.transition(State.RUNNING, "Running")
    assert back.running_since == since
    back.transition(State.BACKOFF, "Restarting: exit code 1")
    assert back.running_since is None and "running_since" not in back.to_record()

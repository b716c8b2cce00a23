"""What ends a stream: the changes of a followed instance or service that mean it is gone."""

from __future__ import annotations

from typing import Any

from runed.api.lifetime import Followed
from runed.store.base import DELETED, MODIFIED, Change, Record

REC = Record("instance", "default", "i-1", {"name": "web-0", "state": "RUNNING"}, 1, 1)


def change(state: str = "", op: str = MODIFIED, name: str = "i-1", kind: str = "instance", **data: Any) -> Change:
    return Change(2, kind, "default", name, op, None if op == DELETED else {"state": state, **data}, 0.0)


def test_a_log_follow_ends_once_the_instance_stopped_for_good() -> None:
    f = Followed.instance(REC)
    # A restart (on request, or after a liveness failure) passes through STOPPED without ending it.
    for after in ("restart", "backoff"):
        assert f.see(change("STOPPING", after_stop=after)) is None
        assert f.see(change("STOPPED")) is None
        assert f.see(change("STARTING")) is None
    assert f.see(change("STOPPING", after_stop="stopped", reason="Stopped on request")) is None
    assert f.see(change("STOPPED", reason="Stopped on request")) == "instance web-0 was stopped (Stopped on request)"
    assert Followed.instance(REC).see(change("EXITED")) == "instance web-0 exited"
    assert Followed.instance(REC).see(change("FATAL", reason="no such user")) == "instance web-0 failed (no such user)"
    assert Followed.instance(REC).see(change(op=DELETED)) == "instance web-0 was deleted"
    # Other objects' changes do not count.
    assert Followed.instance(REC).see(change(op=DELETED, name="i-2")) is None
    assert Followed.instance(REC).see(change(op=DELETED, kind="service", name="web")) is None


def test_an_exec_session_ends_as_soon_as_its_instance_is_stopping() -> None:
    f = Followed.instance(REC, until_stopping=True)
    assert f.see(change("RUNNING")) is None
    assert f.see(change("BACKOFF")) is None  # the instance's own crash: the command may go on
    assert f.see(change("STOPPING", reason="Terminating: service deleted")) == (
        "instance web-0 is stopping (Terminating: service deleted)"
    )


def test_a_service_follow_ends_with_the_service_record() -> None:
    f = Followed.service("default", "web")
    assert f.see(change(kind="service", name="web")) is None
    assert f.see(change(op=DELETED, kind="service", name="web")) == "service web was deleted"

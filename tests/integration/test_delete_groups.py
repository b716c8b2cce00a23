"""A deletion's instances are stopped together, but none is held for one that is slow.

Real runed, real instance processes (under a shim each, and under one keeper). The stops of one
deletion run together and their ends are finished in batches (``runed/controller/stopgroup.py``);
an instance that ignores SIGTERM must not keep the records and directories of those that ended
until its grace period is over, and shows as Stopping meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rune.api import service_pb2
from runed.runner import native
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import alive, eventually

SHIMS = ["auto", pytest.param("shared", marks=pytest.mark.skipif(native.shim_path() is None, reason="no keeper"))]
GRACE = 12


@pytest.mark.parametrize("shim", SHIMS)
def test_what_ended_goes_while_one_instance_still_ignores_sigterm(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    deaf = tmp_path / "deaf"
    # The first instance to start ignores SIGTERM; the others end on it.
    script = (
        f"if mkdir {deaf} 2>/dev/null; then trap '' TERM; echo $$ > {deaf}/pid; fi; echo up; while :; do sleep 1; done"
    )
    o.cast_shell("mixed", script, scale=4)
    insts = eventually(lambda: o.running("mixed", 4), timeout=60, what="four instances running")
    eventually(lambda: all("up" in o.log_lines(i) for i in insts), what="every trap set")
    stubborn = int((deaf / "pid").read_text())
    req = service_pb2.DeleteServiceRequest(name="mixed", namespace="default", grace_period=GRACE)
    o.services.DeleteService(req, metadata=o.auth)

    def the_others_gone() -> dict[str, Any]:
        left = o.instances("mixed")
        assert len(left) == 1, [(i["name"], i["state"]) for i in left]
        assert int(left[0]["pid"]) == stubborn and left[0]["state"] == "STOPPING", left[0]
        for inst in insts:
            if int(inst["pid"]) != stubborn:
                assert not Path(str(inst["log_dir"])).exists(), "an ended instance's directory is left"
        return left[0]

    # Well within the grace period: what ended is deleted, the deaf one still runs and is Stopping.
    eventually(the_others_gone, timeout=GRACE / 2, what="the ended instances deleted")
    assert alive(stubborn), "killed before its grace period ended"
    assert not o.service_gone("mixed")
    eventually(lambda: o.service_gone("mixed"), timeout=GRACE + 20, what="the service deleted")
    assert not alive(stubborn), "killed once its grace period ended"
    assert o.instances("mixed") == []


def test_a_deletion_s_progress_counts_instances_as_they_end(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """GetDeletionStatus counts the deleted instances as they end, not only the first ones and the
    last: here one ends at once, one takes 2 s to shut down, one ignores SIGTERM. (The count is a
    pass's; the controller's watch of its own instance deletions brings one after each commit.)"""
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path)), tmp_path)
    slots = tmp_path / "slots"
    slots.mkdir()
    # The first instance to start ignores SIGTERM, the second takes 2 s to end on it, the rest end at once.
    script = (
        f"if mkdir {slots}/deaf 2>/dev/null; then trap '' TERM; echo $$ > {slots}/deaf/pid; "
        f"elif mkdir {slots}/slow 2>/dev/null; then trap 'sleep 2; exit 0' TERM; fi; "
        "echo up; while :; do sleep 0.1; done"
    )
    o.cast_shell("steps", script, scale=3)
    insts = eventually(lambda: o.running("steps", 3), timeout=60, what="three instances running")
    eventually(lambda: all("up" in o.log_lines(i) for i in insts), what="every trap set")
    stubborn = int((slots / "deaf" / "pid").read_text())
    req = service_pb2.DeleteServiceRequest(name="steps", namespace="default", grace_period=GRACE)
    op_id = o.services.DeleteService(req, metadata=o.auth).deletion_id

    def deleted() -> int:
        get = service_pb2.GetDeletionStatusRequest(namespace="default", name=op_id)
        op = o.services.GetDeletionStatus(get, metadata=o.auth).operation
        assert op.total_instances == 3, op
        return int(op.deleted_instances)

    eventually(lambda: deleted() == 2, timeout=GRACE / 2, what="two of three counted as deleted")
    assert alive(stubborn), "the count came from the end of the grace period, not from the ends"

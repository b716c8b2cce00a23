"""The keeper runner, driven as the controller drives it: real keepers and real instance processes.

A keeper's answer to a start is reported on :meth:`KeeperRunner.start_reports` as it comes (the
controller wakes on it), and each service's starts go to a keeper of their own (``per_service``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.core import fdwait
from runed.runner import native
from runed.runner.base import Handle, LaunchSpec
from runed.runner.keeper import KeeperRunner
from tests.support import alive

PROGRAM = native.shim_path()
pytestmark = pytest.mark.skipif(PROGRAM is None, reason="no C compiler: no keeper")


@pytest.fixture
def runner() -> Iterator[KeeperRunner]:
    assert PROGRAM is not None
    r = KeeperRunner(program=PROGRAM, per_service=True)
    yield r
    r.close(wait=10)
    for proc in r.keepers._procs:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def instances() -> Iterator[Path]:
    """A short directory (a keeper's socket path is limited to 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
    try:
        yield d / "instances"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _start(r: KeeperRunner, instances: Path, service: str, iid: str) -> tuple[Path, Handle]:
    d = instances / iid
    spec = LaunchSpec(
        instance_id=iid,
        namespace="default",
        name=iid,
        service=service,
        directory=d,
        argv=[shutil.which("sleep") or "/bin/sleep", "3600"],
        env={"PATH": os.defpath},
        cwd=str(instances),
    )
    return d, r.start(spec)


def test_a_keeper_s_answer_to_a_start_is_reported_as_it_comes(runner: KeeperRunner, instances: Path) -> None:
    reports = runner.start_reports()
    assert reports is not None, "the controller would see the answer only at its next look"
    d, handle = _start(runner, instances, "web", "web-0")
    assert fdwait.ready(reports, 10)[0], "the keeper's answer is reported"
    runner.drain_reports()
    assert not fdwait.ready(reports, 0)[0], "drained: nothing more to report"
    seen = runner.observe(d, handle)
    assert seen.state == "running" and alive(seen.handle.pid), seen
    os.killpg(seen.handle.pid, 9)


def test_each_service_s_starts_go_to_a_keeper_of_its_own(runner: KeeperRunner, instances: Path) -> None:
    started = [_start(runner, instances, svc, f"{svc}-{i}") for svc in ("web", "db") for i in range(2)]
    reports = runner.start_reports()
    assert reports is not None
    seen = []
    for d, handle in started:
        obs = runner.observe(d, handle)
        while obs.state == "starting":
            assert fdwait.ready(reports, 10)[0], "the keeper's answer is reported"
            runner.drain_reports()
            obs = runner.observe(d, handle)
        assert obs.state == "running", obs
        seen.append(obs.handle)
    web, db = {h.shim_pid for h in seen[:2]}, {h.shim_pid for h in seen[2:]}
    assert len(web) == len(db) == 1 and web != db, (web, db)
    for h in seen:
        os.killpg(h.pid, 9)

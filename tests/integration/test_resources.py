"""Resource limits reach the running process: a memory limit becomes its address-space limit (RLIMIT_AS)."""

from __future__ import annotations

from pathlib import Path

from rune.api import common_pb2
from tests.integration.orch import EXITER, Orch
from tests.support import eventually


def _address_space_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            soft, hard = line.removeprefix("Max address space").split()[:2]
            return soft, hard
    raise AssertionError(f"no address space line in /proc/{pid}/limits")


def test_memory_limit_in_decimal_kilobytes_caps_the_address_space(orch: Orch) -> None:
    # "k" is 1000 bytes. The controller's former parser did not know it and started such an
    # instance with no memory limit at all.
    memory = common_pb2.ResourceLimit(request="300000k", limit="600000k")
    orch.cast("capped", orch.program("sleeper", EXITER), "0", "600", resources=common_pb2.Resources(memory=memory))
    inst = eventually(lambda: orch.running("capped", 1), timeout=20)[0]
    assert _address_space_limit(int(inst["pid"])) == ("600000000", "600000000")

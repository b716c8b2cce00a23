"""Resource quantities (Kubernetes grammar): one parser for CPU and memory, used by validation and runners.

Memory: a decimal number with an optional suffix, decimal (``k``/``K``, ``M``, ``G``, ``T``, ``P``,
``E``) or binary (``Ki`` … ``Ei``); ``512k`` is 512,000 bytes, ``1.5Gi`` is 1,610,612,736.
CPU: cores (``2``, ``0.5``) or millicores (``100m``).
"""

from __future__ import annotations

import re

MEMORY_UNITS: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"
_MEMORY = re.compile(rf"^{_NUMBER}(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?$")
_CPU = re.compile(rf"^{_NUMBER}(m)?$")


class QuantityError(ValueError):
    """A quantity that does not follow the grammar; the message says what was expected."""


def parse_memory(q: str) -> int:
    """Memory quantity -> bytes (rounded down). Raises QuantityError for anything else."""
    m = _MEMORY.match(q.strip())
    if m is None:
        raise QuantityError(
            f"invalid memory quantity {q!r} (expected a number with an optional unit: k, M, G, Ki, Mi, Gi …)"
        )
    return int(float(m.group(1)) * MEMORY_UNITS[m.group(2) or ""])


def parse_cpu(q: str) -> float:
    """CPU quantity -> cores. Raises QuantityError for anything else."""
    m = _CPU.match(q.strip())
    if m is None:
        raise QuantityError(f"invalid cpu quantity {q!r} (expected cores like 0.5 or millicores like 500m)")
    value = float(m.group(1))
    return value / 1000 if m.group(2) else value


def memory_limit(q: str) -> int | None:
    """An optional memory limit: None when unset; a bad value is an error, never silently no limit."""
    return parse_memory(q) if q else None

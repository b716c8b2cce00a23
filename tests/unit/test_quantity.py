"""The one quantity parser: every unit of the table, and the values it refuses."""

from __future__ import annotations

import pytest

from runed.core import quantity

MEMORY = [
    ("1048576", 1048576),
    ("512k", 512_000),
    ("512K", 512_000),
    ("512Ki", 512 * 1024),
    ("100M", 100_000_000),
    ("100Mi", 100 * 2**20),
    ("1.5G", 1_500_000_000),
    ("1.5Gi", int(1.5 * 2**30)),
    ("2T", 2 * 10**12),
    ("2Ti", 2 * 2**40),
    ("1P", 10**15),
    ("1Pi", 2**50),
    ("1E", 10**18),
    ("1Ei", 2**60),
    (".5Mi", 2**19),
]


@pytest.mark.parametrize(("text", "expected"), MEMORY)
def test_memory_units(text: str, expected: int) -> None:
    assert quantity.parse_memory(text) == expected
    assert quantity.memory_limit(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("1", 1.0), ("0.5", 0.5), ("100m", 0.1), ("2500m", 2.5), (".25", 0.25)])
def test_cpu_units(text: str, expected: float) -> None:
    assert quantity.parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "k", "12kb", "1.2.3", "-5M", "5 Mi", "1m", "0x10", "Mi"])
def test_bad_memory_is_an_error_naming_the_value(text: str) -> None:
    with pytest.raises(quantity.QuantityError, match="invalid memory quantity"):
        quantity.parse_memory(text)


@pytest.mark.parametrize("text", ["", "m", "1Gi", "-1", "1.5mm"])
def test_bad_cpu_is_an_error(text: str) -> None:
    with pytest.raises(quantity.QuantityError, match="invalid cpu quantity"):
        quantity.parse_cpu(text)


def test_unset_memory_limit_is_none_and_a_bad_one_never_means_unlimited() -> None:
    assert quantity.memory_limit("") is None
    with pytest.raises(quantity.QuantityError):
        quantity.memory_limit("512kb")

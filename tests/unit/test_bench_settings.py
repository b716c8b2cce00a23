"""The benchmarks' BENCH_* variables: a value that is not a positive number ends the run with a line
naming the variable, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.common import setting


def test_a_setting_takes_the_default_s_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_TEST_N", raising=False)
    assert setting("BENCH_TEST_N", 3) == 3
    monkeypatch.setenv("BENCH_TEST_N", "7")
    assert setting("BENCH_TEST_N", 3) == 7
    monkeypatch.setenv("BENCH_TEST_N", "2.5")
    assert setting("BENCH_TEST_N", 1.0) == 2.5


@pytest.mark.parametrize(("value", "kind"), [("abc", "a number"), ("0", "a number"), ("-1", "a number")])
def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, kind: str) -> None:
    monkeypatch.setenv("BENCH_TEST_N", value)
    with pytest.raises(SystemExit, match=f"BENCH_TEST_N: expected {kind} above 0, got '{value}'"):
        setting("BENCH_TEST_N", 1.0)
    with pytest.raises(SystemExit, match=f"BENCH_TEST_N: expected a whole number above 0, got '{value}'"):
        setting("BENCH_TEST_N", 1)


def test_python_m_bench_says_which_variable_is_wrong() -> None:
    env = {"BENCH_SECONDS": "five", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "bench", "grpc"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert "BENCH_SECONDS: expected a number above 0, got 'five'" in r.stderr
    assert "Traceback" not in r.stderr

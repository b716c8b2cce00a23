"""Descriptors waited on together (``runed.core.readyset``): each reported once."""

from __future__ import annotations

import contextlib
import os

import pytest

from runed.core.readyset import ReadySet


@pytest.mark.parametrize("oneshot", [False, True])
def test_a_readable_descriptor_is_reported_once(oneshot: bool) -> None:
    ready = ReadySet(oneshot=oneshot)
    pipes = [os.pipe() for _ in range(3)]
    try:
        for r, _ in pipes:
            ready.add(r)
        assert ready.take_ready() == []
        os.close(pipes[0][1])  # end of file: readable from now on
        os.write(pipes[2][1], b"x")
        assert sorted(ready.take_ready()) == sorted([pipes[0][0], pipes[2][0]])
        # Still readable, but reported already.
        assert ready.take_ready() == []
        os.write(pipes[1][1], b"x")
        assert ready.take_ready() == [pipes[1][0]]
    finally:
        ready.close()
        for r, w in pipes:
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)

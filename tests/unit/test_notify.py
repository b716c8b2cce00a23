"""Cross-process wake-ups over unix datagram sockets, in data dirs of any depth."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runed.store.notify import Notifier


def _deep(tmp_path: Path) -> Path:
    """A notify directory whose socket paths are longer than a unix socket address can hold."""
    d = tmp_path / ("d" * 60) / ("e" * 60) / "run" / "notify"
    assert len(str(d / "12345-0123abcd.sock")) > 108
    return d


def test_a_wakeup_reaches_the_other_process_in_a_deep_data_dir(tmp_path: Path) -> None:
    directory = _deep(tmp_path)
    waiter, writer = Notifier(directory), Notifier(directory)
    try:
        assert waiter.path.exists() and waiter.path.parent == directory

        async def main() -> bool:
            armed = waiter.arm()
            writer.notify()
            return await waiter.wait(5.0, armed)

        assert asyncio.run(main()) is True
    finally:
        waiter.close()
        writer.close()
    assert not waiter.path.exists() and not writer.path.exists()


def test_a_dead_peers_socket_is_removed_in_a_deep_data_dir(tmp_path: Path) -> None:
    directory = _deep(tmp_path)
    notifier = Notifier(directory)
    stale = directory / "99999-deadbeef.sock"
    stale.touch()  # a file nobody listens on, as a crashed process leaves its socket
    try:
        notifier.notify()
        assert not stale.exists()
    finally:
        notifier.close()

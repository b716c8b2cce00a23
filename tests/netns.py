"""A network namespace joined to this host by a veth pair: a host whose network a test can cut.

``ip netns`` and ``ip link`` need root (tests and CI run as root). Names and the /30 subnet are
chosen per use, so parallel test processes never collide; the namespace (and with it the pair) is
deleted however the test ends. Without root or ``ip`` a test skips with the reason, and with
``CI=true`` it fails instead, so CI never passes by skipping it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"network namespaces are required in CI (CI=true): {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.200.0.0/13 that overlaps no network of this host's addresses."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=20).stdout
    used = [ipaddress.IPv4Interface(line.split()[3]).network for line in out.splitlines() if " inet " in line]
    while True:
        net = ipaddress.IPv4Network((0x0AC80000 + random.randrange(1 << 17) * 4, 30))
        if not any(net.overlaps(u) for u in used):
            return net


@dataclass(frozen=True)
class Netns:
    """The namespace ``name``: ``address`` inside it, ``host_address`` on this host's end ``link``."""

    name: str
    link: str
    host_address: str
    address: str

    def prefix(self) -> list[str]:
        """What runs a command inside the namespace (its network only: same files, same pids)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"]

    def cut(self) -> None:
        """The host's end goes down: nothing passes either way until :meth:`heal`."""
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """A fresh namespace with loopback up and a veth pair to this host, deleted at the end."""
    if os.geteuid() != 0:
        _unavailable("not root")
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            _unavailable(f"no {tool} on PATH")
    tag = uuid.uuid4().hex[:8]
    name, link, peer = f"rt-{tag}", f"rt{tag}h", f"rt{tag}n"
    net = _free_subnet()
    host, inside = str(net[1]), str(net[2])
    try:
        try:
            _ip("netns", "add", name)
            _ip("link", "add", link, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", name)
            _ip("addr", "add", f"{host}/30", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", name, "addr", "add", f"{inside}/30", "dev", peer)
            _ip("-n", name, "link", "set", peer, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            _unavailable(str(e))
        yield Netns(name, link, host, inside)
    finally:
        # Deleting the namespace deletes its end of the pair, and so the pair.
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            _ip("netns", "del", name)
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            _ip("link", "del", link)

"""The client's address in a gRPC peer string, as gRPC writes it (a URI: IPv6 percent-encoded)."""

from __future__ import annotations

import pytest

from runed.api.admin import is_local
from runed.transport.grpc import peer_host


@pytest.mark.parametrize(
    ("peer", "host", "local"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1", True),
        ("ipv4:10.1.2.3:5555", "10.1.2.3", False),
        ("ipv6:%5B::1%5D:5555", "::1", True),
        ("ipv6:[::1]:5555", "::1", True),
        ("ipv6:%5B::ffff:127.0.0.1%5D:5555", "::ffff:127.0.0.1", True),
        ("ipv6:%5Bfe80::1%25eth0%5D:5555", "fe80::1%eth0", False),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7", False),
        ("ipv6:%5B::ffff:10.0.0.1%5D:443", "::ffff:10.0.0.1", False),
        ("unix:/run/runed.sock", "", True),
    ],
)
def test_the_peer_address_is_decoded_before_it_is_judged(peer: str, host: str, local: bool) -> None:
    assert peer_host(peer) == host
    assert is_local(host) is local

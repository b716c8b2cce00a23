"""The channels an API host keeps to nodes (runed.api.forward._channel): one per node, a new one when
the node moves, the old one closed; and never a channel that the node's TLS and this host's disagree on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from runed.api import forward
from runed.core import errors
from runed.core.config import NodeTLSConfig
from tests.pki import PKI, replace_file


def test_a_node_that_moves_gets_a_new_channel_and_its_old_one_is_closed() -> None:
    async def run() -> None:
        plain = NodeTLSConfig()
        first = forward._channel("n7", "127.0.0.1:1", False, plain)
        assert forward._channel("n7", "127.0.0.1:1", False, plain) is first
        moved = forward._channel("n7", "127.0.0.1:2", False, plain)
        assert moved is not first
        await asyncio.sleep(0.1)
        assert first.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        assert moved.get_state() != grpc.ChannelConnectivity.SHUTDOWN
        await moved.close()

    asyncio.run(run())


def test_no_channel_when_the_node_s_tls_and_this_host_s_disagree() -> None:
    async def run() -> None:
        with pytest.raises(errors.Unavailable, match=r"serves its channel over TLS: set node\.tls"):
            forward._channel("n8", "127.0.0.1:3", True, NodeTLSConfig())
        with pytest.raises(errors.Unavailable, match="serves its channel without TLS"):
            forward._channel("n8", "127.0.0.1:3", False, NodeTLSConfig(enabled=True, ca_file="/nowhere"))
        with pytest.raises(errors.Unavailable, match=r"cannot read node\.tls\.ca_file"):
            forward._channel("n8", "127.0.0.1:3", True, NodeTLSConfig(enabled=True, ca_file="/nowhere"))

    asyncio.run(run())


def test_a_changed_ca_file_gets_a_new_channel_and_the_old_one_is_closed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(PKI("old").ca_pem)
    tls = NodeTLSConfig(enabled=True, ca_file=str(ca))

    async def run() -> None:
        first = forward._channel("n9", "127.0.0.1:4", True, tls)
        assert forward._channel("n9", "127.0.0.1:4", True, tls) is first
        replace_file(ca, PKI("new").ca_pem)
        renewed = forward._channel("n9", "127.0.0.1:4", True, tls)
        assert renewed is not first
        await asyncio.sleep(0.1)
        assert first.get_state() == grpc.ChannelConnectivity.SHUTDOWN
        await renewed.close()

    asyncio.run(run())

"""The Connect protocol's pure parts: envelopes, compression negotiation and bounds, side-effect-free methods."""

from __future__ import annotations

import gzip

import pytest

from rune.gateway import connect
from rune.gateway.http import PayloadTooLarge
from runed.core import errors
from runed.pipeline import methods


def test_side_effect_free_names_real_unary_methods() -> None:
    by_name = methods.by_full_name()
    for name in connect.SIDE_EFFECT_FREE:
        assert name in by_name, name
        assert connect.side_effect_free(by_name[name]), name
    assert not connect.side_effect_free(by_name["/rune.api.NamespaceService/CreateNamespace"])
    # A secret's values stay out of cacheable GET responses.
    assert not connect.side_effect_free(by_name["/rune.api.SecretService/GetSecret"])
    assert connect.allowed_verbs(by_name["/rune.api.AuthService/WhoAmI"]) == ["GET", "POST"]


@pytest.mark.parametrize(
    ("accept", "fallback", "chosen"),
    [
        (None, "gzip", "gzip"),  # no Accept-Encoding: the request's own encoding
        (None, "identity", "identity"),
        ("br, gzip", "identity", "gzip"),  # the first one this server has
        ("gzip;q=0, identity", "identity", "identity"),
        ("br, zstd", "gzip", "identity"),  # identity is always acceptable
        ("GZIP", "identity", "gzip"),
    ],
)
def test_negotiate(accept: str | None, fallback: str, chosen: str) -> None:
    assert connect.negotiate(accept, fallback) == chosen


def test_envelopes_round_trip_and_refusals() -> None:
    data = connect.envelope(b"one") + connect.envelope(gzip.compress(b"two"), connect.FLAG_COMPRESSED)
    assert list(connect.envelopes(data, "gzip", 100)) == [b"one", b"two"]
    with pytest.raises(errors.InvalidArgument, match="without Connect-Content-Encoding"):
        list(connect.envelopes(data, "identity", 100))
    with pytest.raises(errors.InvalidArgument, match="truncated prefix"):
        list(connect.envelopes(b"\x00\x00", "identity", 100))
    with pytest.raises(errors.InvalidArgument, match="9 bytes announced"):
        list(connect.envelopes(b"\x00\x00\x00\x00\x09{}", "identity", 100))
    with pytest.raises(errors.InvalidArgument, match="end-stream"):
        list(connect.envelopes(connect.envelope(b"{}", connect.FLAG_END_STREAM), "identity", 100))


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 2000
    with pytest.raises(PayloadTooLarge):
        connect.decompress(bomb, "gzip", 4096)
    assert connect.decompress(gzip.compress(b"x" * 4096), "gzip", 4096) == b"x" * 4096
    with pytest.raises(errors.InvalidArgument, match="malformed gzip"):
        connect.decompress(b"not gzip", "gzip", 4096)
    with pytest.raises(errors.InvalidArgument, match="truncated"):
        connect.decompress(gzip.compress(b"x" * 100)[:-4], "gzip", 4096)

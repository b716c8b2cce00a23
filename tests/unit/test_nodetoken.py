"""Node tokens: one node, one minute, a key derived from the cluster's auth.key; the node channel's port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runed.auth import nodetoken
from runed.core.config import ConfigError, load

KEY = b"k" * 32


def test_a_token_carries_its_node_and_subject() -> None:
    claims = nodetoken.verify(KEY, "n1", nodetoken.mint(KEY, "n1", "alice"))
    assert (claims.node, claims.subject) == ("n1", "alice")


# Tokens are minted when the test runs, not at collection: a run may reach this test minutes later.
@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: nodetoken.mint(KEY, "n2", "alice"), "node token is not for node n1"),
        (lambda: nodetoken.mint(KEY, "n1", "alice", lifetime=-60), "node token expired"),
        (lambda: nodetoken.mint(b"o" * 32, "n1", "alice"), "not a node token of this cluster"),
        (lambda: "rune_0123456789abcdef", "not a node token of this cluster"),
    ],
)
def test_a_node_refuses_other_tokens(token: Callable[[], str], why: str) -> None:
    with pytest.raises(nodetoken.TokenError, match=why):
        nodetoken.verify(KEY, "n1", token())


def test_the_signing_key_is_not_the_auth_key() -> None:
    # Signed with auth.key itself (not the derived key): refused.
    import jwt

    raw = jwt.encode({"iss": nodetoken.ISSUER, "aud": "n1", "sub": "x", "exp": 2**40}, KEY, algorithm="HS256")
    with pytest.raises(nodetoken.TokenError):
        nodetoken.verify(KEY, "n1", raw)


def test_node_port_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "runefile.yaml"
    f.write_text("node:\n  port: 70000\n")
    with pytest.raises(ConfigError) as ei:
        load({}, env={}, config_file=str(f))
    assert any(p.startswith("node.port: must be between 0 and 65535") for p in ei.value.problems)
    assert load({}, env={"RUNE_NODE_PORT": "0"}).node.port == 0

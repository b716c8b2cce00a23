"""Tokens: format, keyed-hash storage, indexed lookup, expiry, revocation, last-use throttling."""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.auth.identity import KEY_FILE, TOKEN, TOKEN_PREFIX, Identity, hash_secret, load_server_key
from runed.core import errors
from runed.store.sqlite import SQLiteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


@pytest.fixture
def ident(store: SQLiteStore, tmp_path: Path) -> Identity:
    i = Identity(store, load_server_key(tmp_path))
    i.seed_builtin_policies()
    return i


def test_server_key_is_private_and_stable(tmp_path: Path) -> None:
    k1 = load_server_key(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode)
    assert mode == 0o600
    assert len(k1) == 32
    assert load_server_key(tmp_path) == k1


def test_concurrent_key_creation_agrees(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_server_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_token_has_prefix_and_256_bits(ident: Identity) -> None:
    user = ident.create_user("alice", policies=["readonly"])
    issued = ident.issue_token(user, "t1")
    assert issued.secret.startswith(TOKEN_PREFIX)
    raw = base64.urlsafe_b64decode(issued.secret[len(TOKEN_PREFIX) :] + "=")
    assert len(raw) * 8 >= 256
    other = ident.issue_token(user, "t2")
    assert other.secret != issued.secret


def test_only_the_keyed_hash_is_stored(ident: Identity, store: SQLiteStore, tmp_path: Path) -> None:
    user = ident.create_user("alice")
    issued = ident.issue_token(user, "t1")
    db = b"".join(p.read_bytes() for p in tmp_path.glob("runed.db*"))
    assert issued.secret.encode() not in db
    rec = store.get_by_index(TOKEN, hash_secret(ident.key, issued.secret))
    assert rec is not None and rec.name == issued.id
    # An unkeyed hash (what upstream stored) finds nothing.
    import hashlib

    assert store.get_by_index(TOKEN, hashlib.sha256(issued.secret.encode()).hexdigest()) is None


def test_lookup_refuses_unknown_revoked_and_expired(ident: Identity) -> None:
    user = ident.create_user("alice")
    live = ident.issue_token(user, "live")
    assert ident.lookup_token(live.secret) is not None
    assert ident.lookup_token(live.secret + "x") is None
    assert ident.lookup_token("not-a-rune-token") is None
    short = ident.issue_token(user, "short", ttl_seconds=1)
    assert ident.lookup_token(short.secret) is not None
    revoked = ident.issue_token(user, "revoked")
    assert ident.revoke_token(revoked.id)
    assert ident.lookup_token(revoked.secret) is None
    assert not ident.revoke_token("no-such-token")
    deadline = time.monotonic() + 5
    while ident.lookup_token(short.secret) is not None:
        assert time.monotonic() < deadline, "token with ttl 1s still valid after 5s"
        time.sleep(0.1)


def test_a_different_server_key_invalidates_tokens(ident: Identity, store: SQLiteStore) -> None:
    user = ident.create_user("alice")
    issued = ident.issue_token(user, "t")
    assert Identity(store, b"k" * 32).lookup_token(issued.secret) is None


def test_last_used_is_written_at_most_once_per_interval(ident: Identity, store: SQLiteStore) -> None:
    user = ident.create_user("alice")
    issued = ident.issue_token(user, "t")
    ident.touch(issued.id)
    rec = store.get(TOKEN, "system", issued.id)
    assert rec is not None and rec.data["last_used_at"] > 0
    rev = store.current_revision()
    for _ in range(50):
        ident.touch(issued.id)
    assert store.current_revision() == rev


def test_bootstrap_once_then_reset_revokes_root_tokens(ident: Identity) -> None:
    first = ident.bootstrap()
    with pytest.raises(errors.FailedPrecondition, match="already bootstrapped"):
        ident.bootstrap()
    new, revoked = ident.reset_root()
    assert revoked == 1
    assert ident.lookup_token(first.secret) is None
    assert ident.lookup_token(new.secret) is not None
    root = ident.get_user("root")
    assert root is not None and root["policies"] == ["root"]


def test_upsert_user_merges_policies_and_keeps_id(ident: Identity) -> None:
    u1 = ident.upsert_user("bob", "bob@example.com", ["readonly"])
    u2 = ident.upsert_user("bob", "", ["readwrite", "readonly"])
    assert u2["id"] == u1["id"]
    assert u2["email"] == "bob@example.com"
    assert u2["policies"] == ["readonly", "readwrite"]
    assert ident.get_user_by_id(u1["id"]) == u2


def test_builtin_seeding_is_idempotent(ident: Identity, store: SQLiteStore) -> None:
    rev = store.current_revision()
    ident.seed_builtin_policies()
    assert store.current_revision() == rev
    assert {p["name"] for p in ident.list_policies()} >= {"root", "admin", "readwrite", "readonly"}

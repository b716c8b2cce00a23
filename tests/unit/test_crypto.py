"""Unit tests for envelope encryption and KEK handling (real files, real AES-GCM)."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
from pathlib import Path

import pytest

from runed.core.config import Config, EncryptionConfig, KEKConfig, SecretConfig
from runed.secrets.crypto import CryptoError, Envelope, SecretCrypto, key_id


def _cfg(tmp_path: Path, source: str = "file") -> Config:
    return Config(
        data_dir=str(tmp_path),
        secret=SecretConfig(encryption=EncryptionConfig(kek=KEKConfig(source=source))),
    )


def test_first_use_creates_a_private_kek_file(tmp_path: Path) -> None:
    c = SecretCrypto(_cfg(tmp_path))
    kid = c.load()
    kek_file = tmp_path / "kek.b64"
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    raw = base64.b64decode(kek_file.read_text())
    assert len(raw) == 32 and key_id(raw) == kid
    # A second instance (another role process) uses the same key.
    assert SecretCrypto(_cfg(tmp_path)).load() == kid


def test_round_trip_and_fresh_key_per_version(tmp_path: Path) -> None:
    c = SecretCrypto(_cfg(tmp_path))
    data = {"password": "hunter2", "token": "t" * 100}
    e1 = c.encrypt("default", "db", 1, data)
    e2 = c.encrypt("default", "db", 1, data)
    assert e1.wrapped_dek != e2.wrapped_dek and e1.ciphertext != e2.ciphertext
    assert b"hunter2" not in e1.ciphertext
    assert c.decrypt("default", "db", 1, e1) == data
    assert c.decrypt("default", "db", 1, Envelope.from_json(e1.to_json())) == data


@pytest.mark.parametrize(("ns", "name", "version"), [("other", "db", 1), ("default", "db2", 1), ("default", "db", 2)])
def test_associated_data_binds_namespace_name_and_version(tmp_path: Path, ns: str, name: str, version: int) -> None:
    c = SecretCrypto(_cfg(tmp_path))
    env = c.encrypt("default", "db", 1, {"k": "SUPERSECRETVALUE"})
    with pytest.raises(CryptoError) as e:
        c.decrypt(ns, name, version, env)
    assert "SUPERSECRETVALUE" not in str(e.value)


def test_tampered_ciphertext_is_rejected(tmp_path: Path) -> None:
    c = SecretCrypto(_cfg(tmp_path))
    env = c.encrypt("default", "db", 1, {"k": "v"})
    bad = dataclasses.replace(env, ciphertext=env.ciphertext[:-1] + bytes([env.ciphertext[-1] ^ 1]))
    with pytest.raises(CryptoError):
        c.decrypt("default", "db", 1, bad)


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    SecretCrypto(_cfg(tmp_path)).load()
    os.chmod(tmp_path / "kek.b64", 0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        SecretCrypto(_cfg(tmp_path)).load()


def test_env_source_with_several_keys(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    b64 = base64.b64encode
    c_old = SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": b64(old).decode()})
    env = c_old.encrypt("default", "db", 1, {"k": "v"})
    c_both = SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": f"{b64(new).decode()},{b64(old).decode()}"})
    assert c_both.active_kid == key_id(new)
    assert c_both.decrypt("default", "db", 1, env) == {"k": "v"}
    rewrapped = c_both.rewrap("default", "db", 1, env)
    assert rewrapped is not None and rewrapped.kid == key_id(new)
    c_new = SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": b64(new).decode()})
    assert c_new.decrypt("default", "db", 1, rewrapped) == {"k": "v"}
    assert not (tmp_path / "kek.b64").exists()


def test_env_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="RUNE_MASTER_KEY"):
        SecretCrypto(_cfg(tmp_path, "env"), env={}).load()
    with pytest.raises(CryptoError, match="32 bytes"):
        SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": base64.b64encode(b"short").decode()}).load()


def test_rotation_keeps_old_key_readable_until_dropped(tmp_path: Path) -> None:
    writer = SecretCrypto(_cfg(tmp_path))
    reader = SecretCrypto(_cfg(tmp_path))  # another process that loaded keys before the rotation
    env = writer.encrypt("default", "db", 3, {"k": "v"})
    assert reader.decrypt("default", "db", 3, env) == {"k": "v"}

    rotator = SecretCrypto(_cfg(tmp_path))
    old_kid, new_kid = rotator.begin_rotation()
    assert old_kid == env.kid and new_kid != old_kid
    assert stat.S_IMODE(rotator.retired_path(old_kid).stat().st_mode) == 0o600
    # Writers notice the new KEK file on their next operation; old data stays readable.
    assert writer.encrypt("default", "x", 1, {"a": "b"}).kid == new_kid
    fresh = SecretCrypto(_cfg(tmp_path))
    assert fresh.decrypt("default", "db", 3, env) == {"k": "v"}

    new_env = rotator.rewrap("default", "db", 3, env)
    assert new_env is not None and new_env.kid == new_kid and new_env.ciphertext == env.ciphertext
    assert rotator.rewrap("default", "db", 3, new_env) is None
    assert rotator.drop_retired(keep={new_kid}) == [old_kid]
    assert not rotator.retired_path(old_kid).exists()
    assert SecretCrypto(_cfg(tmp_path)).decrypt("default", "db", 3, new_env) == {"k": "v"}
    with pytest.raises(CryptoError, match="not available"):
        SecretCrypto(_cfg(tmp_path)).decrypt("default", "db", 3, env)


def test_rewrap_all_with_env_keys_over_a_real_store(tmp_path: Path) -> None:
    from runed.secrets.access import SECRET_KIND, read_secret_data, rewrap_all, secret_record
    from runed.store.sqlite import SQLiteStore

    b64 = base64.b64encode
    old, new = os.urandom(32), os.urandom(32)
    store = SQLiteStore(tmp_path / "runed.db", notify=False)
    try:
        c_old = SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": b64(old).decode()})
        for i in range(3):
            rec = secret_record(
                c_old, "default", f"s{i}", type_="static", data={"v": str(i)}, version=1, created_at="", updated_at=""
            )
            store.put(SECRET_KIND, "default", f"s{i}", rec)
        c_both = SecretCrypto(
            _cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": f"{b64(new).decode()},{b64(old).decode()}"}
        )
        result = rewrap_all(store, c_both)
        assert (result.new_kid, result.rewrapped, result.removed_kids) == (key_id(new), 3, [])
        c_new = SecretCrypto(_cfg(tmp_path, "env"), env={"RUNE_MASTER_KEY": b64(new).decode()})
        assert [read_secret_data(store, c_new, "default", f"s{i}") for i in range(3)] == [
            {"v": "0"},
            {"v": "1"},
            {"v": "2"},
        ]
        assert rewrap_all(store, c_both).rewrapped == 0
    finally:
        store.close()

"""Envelope encryption for secrets: a fresh AES-256-GCM data key per version, wrapped by a KEK.

KEKs are identified by a key id derived from the key (a truncated SHA-256), so records name the
KEK that wraps their data key and several KEKs can coexist while ``runed kek rotate`` re-wraps
every data key. The active KEK lives in ``<data_dir>/kek.b64`` (mode 0600, created on first use)
or in ``RUNE_MASTER_KEY``; a retired KEK stays readable from ``<kek file>.<kid>.retired`` until
no record refers to it any more.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets as _secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runed.core.config import Config

log = logging.getLogger("runed.crypto")

KEY_BYTES = 32
NONCE_BYTES = 12
ALGORITHM = "AES-256-GCM"
ENV_MASTER_KEY = "RUNE_MASTER_KEY"
RETIRED_SUFFIX = ".retired"


class CryptoError(Exception):
    """A key cannot be loaded or a ciphertext cannot be opened. Messages never contain plaintext."""


def key_id(kek: bytes) -> str:
    """A stable, non-reversible name for a KEK (what records store instead of the key)."""
    return hashlib.sha256(b"rune-kek-id:" + kek).hexdigest()[:16]


def _decode_key(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"{where}: not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"{where}: a KEK must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def write_key_file(path: Path, kek: bytes) -> bool:
    """Create ``path`` holding ``kek`` (0600) atomically; False when it already exists.

    The content is written to a private temp file first and hard-linked into place, so two
    processes racing on first boot never see a half-written key and exactly one key wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_b64(kek) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def replace_key_file(path: Path, kek: bytes) -> None:
    """Atomically replace ``path`` with ``kek`` (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_b64(kek) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_key_file(path: Path) -> bytes:
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise CryptoError(f"{path}: KEK file must not be readable by group or others (chmod 600)")
    return _decode_key(path.read_text(), str(path))


@dataclass(frozen=True)
class Envelope:
    """The stored, encrypted form of one secret version (JSON-able via :meth:`to_json`)."""

    kid: str
    wrapped_dek: bytes  # nonce || AES-GCM(KEK, DEK)
    ciphertext: bytes  # nonce || AES-GCM(DEK, JSON data)

    def to_json(self) -> dict[str, Any]:
        return {
            "alg": ALGORITHM,
            "kid": self.kid,
            "wrapped_dek": _b64(self.wrapped_dek),
            "ciphertext": _b64(self.ciphertext),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Envelope:
        if d.get("alg") != ALGORITHM:
            raise CryptoError(f"unsupported encryption algorithm {d.get('alg')!r}")
        return cls(kid=str(d["kid"]), wrapped_dek=_unb64(d["wrapped_dek"]), ciphertext=_unb64(d["ciphertext"]))


def _aad(namespace: str, name: str, version: int) -> bytes:
    # Names are DNS-1123, so '|' cannot occur in them and the binding is unambiguous.
    return f"{namespace}|{name}|{version}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


class SecretCrypto:
    """Encrypts and decrypts secret data with envelope encryption; KEKs are loaded lazily.

    Safe to share between threads. The key ring is re-read when the KEK file changes or a record
    names an unknown key id, so a rotation done by another process needs no restart.
    """

    def __init__(self, config: Config, env: dict[str, str] | None = None) -> None:
        kek_cfg = config.secret.encryption.kek
        self.source = kek_cfg.source
        self.path = Path(kek_cfg.file) if kek_cfg.file else config.data_path / "kek.b64"
        self._env = dict(os.environ) if env is None else env
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self._active = ""
        self._stamp: tuple[int, int] | None = None

    # -- key ring -------------------------------------------------------------------------------
    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _load(self) -> None:
        keys: dict[str, bytes] = {}
        if self.source == "env":
            raw = self._env.get(ENV_MASTER_KEY, "")
            if not raw.strip():
                raise CryptoError(f"secret.encryption.kek.source is env but {ENV_MASTER_KEY} is not set")
            # Several comma-separated keys: the first is active, the others stay readable.
            parts = [p for p in raw.split(",") if p.strip()]
            decoded = [_decode_key(p, f"{ENV_MASTER_KEY}[{i}]") for i, p in enumerate(parts)]
            for k in decoded:
                keys[key_id(k)] = k
            self._active = key_id(decoded[0])
            self._stamp = None
        else:
            if not self.path.exists():
                write_key_file(self.path, os.urandom(KEY_BYTES))
                log.info("created a new key-encryption key in %s", self.path)
            active = _read_key_file(self.path)
            self._stamp = self._file_stamp()
            for retired in sorted(self.path.parent.glob(f"{self.path.name}.*{RETIRED_SUFFIX}")):
                k = _read_key_file(retired)
                keys[key_id(k)] = k
            keys[key_id(active)] = active
            self._active = key_id(active)
        self._keys = keys

    def _ensure(self, want_kid: str | None = None) -> None:
        with self._lock:
            stale = not self._keys or (self.source == "file" and self._file_stamp() != self._stamp)
            if stale or (want_kid is not None and want_kid not in self._keys):
                self._load()

    def load(self) -> str:
        """Load (creating on first boot) the KEKs; returns the active key id."""
        self._ensure()
        return self._active

    @property
    def active_kid(self) -> str:
        self._ensure()
        return self._active

    def _kek(self, kid: str) -> bytes:
        self._ensure(kid)
        key = self._keys.get(kid)
        if key is None:
            raise CryptoError(f"key-encryption key {kid} is not available (was a retired KEK file removed?)")
        return key

    # -- envelope operations --------------------------------------------------------------------
    def encrypt(self, namespace: str, name: str, version: int, data: dict[str, str]) -> Envelope:
        """Seal ``data`` under a fresh data key bound to (namespace, name, version)."""
        self._ensure()
        kid = self._active
        kek = self._keys[kid]
        dek = AESGCM.generate_key(bit_length=256)
        aad = _aad(namespace, name, version)
        ciphertext = _seal(dek, orjson.dumps(data, option=orjson.OPT_SORT_KEYS), aad)
        wrapped = _seal(kek, dek, aad + b"|dek")
        return Envelope(kid=kid, wrapped_dek=wrapped, ciphertext=ciphertext)

    def _unwrap(self, namespace: str, name: str, version: int, env: Envelope) -> bytes:
        try:
            return _open(self._kek(env.kid), env.wrapped_dek, _aad(namespace, name, version) + b"|dek")
        except InvalidTag:
            raise CryptoError(f'data key of secret "{name}" in namespace "{namespace}" cannot be unwrapped') from None

    def decrypt(self, namespace: str, name: str, version: int, env: Envelope) -> dict[str, str]:
        """Open a sealed version; fails if the record was moved, altered or its KEK is missing."""
        dek = self._unwrap(namespace, name, version, env)
        try:
            plain = _open(dek, env.ciphertext, _aad(namespace, name, version))
        except InvalidTag:
            raise CryptoError(f'secret "{name}" in namespace "{namespace}" cannot be decrypted') from None
        data = orjson.loads(plain)
        return {str(k): str(v) for k, v in data.items()}

    def rewrap(self, namespace: str, name: str, version: int, env: Envelope) -> Envelope | None:
        """The same data key wrapped under the active KEK, or None when it already is."""
        self._ensure()
        if env.kid == self._active:
            return None
        dek = self._unwrap(namespace, name, version, env)
        wrapped = _seal(self._keys[self._active], dek, _aad(namespace, name, version) + b"|dek")
        return Envelope(kid=self._active, wrapped_dek=wrapped, ciphertext=env.ciphertext)

    # -- rotation -------------------------------------------------------------------------------
    def retired_path(self, kid: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{kid}{RETIRED_SUFFIX}")

    def begin_rotation(self) -> tuple[str, str]:
        """File source: keep the current KEK readable as a retired file, then install a new one.

        Returns (old kid, new kid). Readers in other processes pick the new file up on their
        next operation and still find the old key in its retired file.
        """
        if self.source != "file":
            raise CryptoError(
                f"with secret.encryption.kek.source=env, put the new key first in {ENV_MASTER_KEY} "
                "(comma-separated, old keys after it) and run rotate to re-wrap"
            )
        self._ensure()
        old_kid = self._active
        old = self._keys[old_kid]
        write_key_file(self.retired_path(old_kid), old)
        new = os.urandom(KEY_BYTES)
        replace_key_file(self.path, new)
        self._ensure()
        return old_kid, self._active

    def drop_retired(self, keep: set[str]) -> list[str]:
        """Delete retired KEK files whose key id no record uses any more; returns their ids."""
        if self.source != "file":
            return []
        removed = []
        for f in self.path.parent.glob(f"{self.path.name}.*{RETIRED_SUFFIX}"):
            kid = f.name[len(self.path.name) + 1 : -len(RETIRED_SUFFIX)]
            if kid not in keep and kid != self.active_kid:
                f.unlink(missing_ok=True)
                removed.append(kid)
        return removed

"""Users, tokens and policies: the stored identity model and the operations on it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runed.core import errors
from runed.store.base import AuditEntry, Store, iter_all

log = logging.getLogger("runed.identity")

# Identity objects are cluster-scoped; they live in one pseudo-namespace.
SYSTEM = "system"
USER = "user"
TOKEN = "token"
POLICY = "policy"

TOKEN_PREFIX = "rune_"
TOKEN_BYTES = 32  # 256 bits of randomness
KEY_FILE = "auth.key"

ALL_VERBS = ("*",)
READWRITE_VERBS = ("get", "list", "watch", "create", "update", "delete", "scale", "exec", "read")
READONLY_VERBS = ("get", "list", "watch")

# Resources readwrite and readonly may touch: every resource except "admin" (rules have no
# negation, so the built-ins list them). Keep in step with runed.auth.rbac.TABLE (a unit test checks it).
READWRITE_RESOURCES = (
    "services",
    "instances",
    "logs",
    "exec",
    "health",
    "secrets",
    "configmaps",
    "namespaces",
    "nodes",
    "tokens",
)


def _rule(resource: str, verbs: tuple[str, ...], namespace: str = "*") -> dict[str, Any]:
    return {"resource": resource, "verbs": list(verbs), "namespace": namespace}


BUILTIN_POLICIES: dict[str, dict[str, Any]] = {
    "root": {"description": "Full access to everything", "rules": [_rule("*", ALL_VERBS)]},
    "admin": {"description": "Full access to everything", "rules": [_rule("*", ALL_VERBS)]},
    "readwrite": {
        "description": "Read and write every resource, except administration",
        "rules": [_rule(r, READWRITE_VERBS) for r in READWRITE_RESOURCES],
    },
    "readonly": {
        "description": "Get, list and watch every resource; no secret values, no exec",
        "rules": [_rule(r, READONLY_VERBS) for r in READWRITE_RESOURCES],
    },
}


# -- server key ---------------------------------------------------------------------------------
def load_server_key(data_dir: Path) -> bytes:
    """The HMAC key tokens are hashed with: a 0600 file in the data dir, created on first use.

    Several role processes may race to create it: each writes a private temp file and links it
    into place (atomic, fails if present), then everyone reads the winner.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, base64.b64encode(secrets.token_bytes(32)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = base64.b64decode(path.read_bytes().strip())
    if len(key) < 32:
        raise errors.Internal(f"{KEY_FILE} is corrupt (expected 32 bytes of key)")
    return key


def hash_secret(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode().rstrip("=")


# -- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedToken:
    """A freshly minted token: the only moment its secret exists outside the caller."""

    id: str
    name: str
    secret: str
    subject_id: str


@dataclass
class Identity:
    """Identity operations over the store, bound to the server key."""

    store: Store
    key: bytes
    # token id -> last time last_used_at was written (monotonic): writes are throttled.
    _last_touch: dict[str, float] = field(default_factory=dict)

    # -- policies -------------------------------------------------------------------------------
    def seed_builtin_policies(self) -> None:
        """Make the stored built-ins match the code (idempotent, no write when unchanged)."""
        for name, spec in BUILTIN_POLICIES.items():
            want = {"name": name, "description": spec["description"], "rules": spec["rules"], "builtin": True}

            def mutate(cur: dict[str, Any] | None, want: dict[str, Any] = want) -> dict[str, Any] | None:
                if cur is not None and all(cur.get(k) == v for k, v in want.items()):
                    return None
                return {**want, "id": (cur or {}).get("id") or str(uuid.uuid4())}

            self.store.update(POLICY, SYSTEM, name, mutate)

    def get_policy(self, name: str) -> dict[str, Any] | None:
        rec = self.store.get(POLICY, SYSTEM, name)
        return rec.data if rec else None

    def list_policies(self) -> list[dict[str, Any]]:
        return [r.data for r in iter_all(self.store, POLICY, SYSTEM)]

    def rules_of(self, policy_names: tuple[str, ...]) -> list[dict[str, Any]]:
        rules: list[dict[str, Any]] = []
        for name in policy_names:
            p = self.get_policy(name)
            if p is not None:
                rules.extend(p.get("rules", []))
        return rules

    # -- users ----------------------------------------------------------------------------------
    def get_user(self, name: str) -> dict[str, Any] | None:
        rec = self.store.get(USER, SYSTEM, name)
        return rec.data if rec else None

    def get_user_by_id(self, user_id: str) -> dict[str, Any] | None:
        rec = self.store.get_by_index(USER, user_id)
        return rec.data if rec else None

    def find_user(self, user_id: str = "", name: str = "") -> dict[str, Any] | None:
        if user_id:
            u = self.get_user_by_id(user_id)
            if u is not None:
                return u
        return self.get_user(name) if name else None

    def create_user(self, name: str, email: str = "", policies: list[str] | None = None) -> dict[str, Any]:
        """Create a user; fails with ALREADY_EXISTS when the name is taken."""
        uid = str(uuid.uuid4())
        data = {"id": uid, "name": name, "email": email, "policies": list(policies or []), "created_at": time.time()}
        self.store.create(USER, SYSTEM, name, data, index_key=uid)
        return data

    def upsert_user(self, name: str, email: str = "", policies: list[str] | None = None) -> dict[str, Any]:
        """Create, or update email and merge policies (keeping order) into an existing user."""
        wanted = list(dict.fromkeys(policies or []))
        for _ in range(3):
            if self.get_user(name) is None:
                try:
                    return self.create_user(name, email, wanted)
                except errors.AlreadyExists:
                    continue  # created concurrently: merge into it

            def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
                if cur is None:
                    return None
                if email:
                    cur["email"] = email
                cur["policies"] = list(dict.fromkeys([*cur.get("policies", []), *wanted]))
                return cur

            # The id index is set at creation only: an update must not replace it.
            rec = self.store.update(USER, SYSTEM, name, mutate)
            if rec is not None:
                return rec.data
        raise errors.Conflict(f'user "{name}" changed concurrently; retry')

    def set_user_policies(self, name: str, change: Any) -> dict[str, Any] | None:
        """Apply ``change(list) -> list`` to a user's policies atomically; None when no such user."""

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None:
                return None
            cur["policies"] = list(change(list(cur.get("policies", []))))
            return cur

        rec = self.store.update(USER, SYSTEM, name, mutate)
        return rec.data if rec else None

    def list_users(self) -> list[dict[str, Any]]:
        return [r.data for r in iter_all(self.store, USER, SYSTEM)]

    # -- tokens ---------------------------------------------------------------------------------
    def issue_token(
        self,
        user: dict[str, Any],
        name: str,
        *,
        description: str = "",
        ttl_seconds: int = 0,
        policies: list[str] | None = None,
    ) -> IssuedToken:
        """Mint a token for ``user``; ``policies`` scope it (checked by the caller against the user's rights)."""
        secret = new_secret()
        tid = str(uuid.uuid4())
        now = time.time()
        data = {
            "id": tid,
            "name": name or f"token-{tid[:8]}",
            "subject_id": user["id"],
            "subject_name": user["name"],
            "subject_type": "user",
            "description": description,
            "issued_at": now,
            "expires_at": now + ttl_seconds if ttl_seconds > 0 else 0,
            "revoked": False,
            "last_used_at": 0,
            # The token's scope: authorization needs these policies' rules as well as the user's.
            "policies": list(dict.fromkeys(policies or [])),
        }
        # Only the keyed hash is stored, and it is the index: lookups never scan.
        self.store.create(TOKEN, SYSTEM, tid, data, index_key=hash_secret(self.key, secret))
        return IssuedToken(tid, data["name"], secret, user["id"])

    def lookup_token(self, secret: str) -> dict[str, Any] | None:
        """The token record for a presented secret, when it is valid (known, live, unexpired)."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        rec = self.store.get_by_index(TOKEN, hash_secret(self.key, secret))
        if rec is None:
            return None
        tok = rec.data
        if tok.get("revoked"):
            return None
        exp = float(tok.get("expires_at") or 0)
        if exp and exp <= time.time():
            return None
        return tok

    def refusal(self, secret: str) -> tuple[str, dict[str, Any] | None]:
        """Why ``secret`` is not a valid token, and its record when it names one (for the audit log only:
        clients get one message for every bad token)."""
        if not secret.startswith(TOKEN_PREFIX):
            return "not a rune token", None
        rec = self.store.get_by_index(TOKEN, hash_secret(self.key, secret))
        if rec is None:
            return "unknown token", None
        tok = rec.data
        if tok.get("revoked"):
            return f"revoked token {tok.get('id', '')}", tok
        exp = float(tok.get("expires_at") or 0)
        if exp and exp <= time.time():
            return f"expired token {tok.get('id', '')}", tok
        return f"token {tok.get('id', '')} of a user that no longer exists", tok

    def touch_due(self, token_id: str, every_seconds: float = 60.0) -> bool:
        """Whether :meth:`touch` would write now (it writes at most once per ``every_seconds``)."""
        last = self._last_touch.get(token_id)
        return last is None or time.monotonic() - last >= every_seconds

    def touch(self, token_id: str, every_seconds: float = 60.0) -> None:
        """Record use, at most once per ``every_seconds`` per token and process (writes are costly)."""
        if not self.touch_due(token_id, every_seconds):
            return
        now_m = time.monotonic()
        self._last_touch[token_id] = now_m
        now = time.time()

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None or now - float(cur.get("last_used_at") or 0) < every_seconds:
                return None
            cur["last_used_at"] = now
            return cur

        try:
            self.store.update(TOKEN, SYSTEM, token_id, mutate)
        except errors.StorageFull:
            # A bookkeeping write inside a read: a full disk must not refuse the read (tried again later).
            pass

    def get_token(self, token_id: str) -> dict[str, Any] | None:
        rec = self.store.get(TOKEN, SYSTEM, token_id)
        return rec.data if rec else None

    def revoke_token(self, token_id: str) -> bool:
        """Mark a token revoked (kept for TokenList); False when it does not exist."""
        found = False

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal found
            if cur is None:
                return None
            found = True
            if cur.get("revoked"):
                return None
            cur["revoked"] = True
            cur["revoked_at"] = time.time()
            return cur

        self.store.update(TOKEN, SYSTEM, token_id, mutate)
        return found

    def list_tokens(self) -> list[dict[str, Any]]:
        return [r.data for r in iter_all(self.store, TOKEN, SYSTEM)]

    def revoke_tokens_of(self, subject_id: str) -> int:
        n = 0
        for tok in self.list_tokens():
            if tok.get("subject_id") == subject_id and not tok.get("revoked") and self.revoke_token(tok["id"]):
                n += 1
        return n

    # -- bootstrap ------------------------------------------------------------------------------
    def bootstrap(self) -> IssuedToken:
        """Create user ``root`` with policy ``root`` and its first token; only once per data dir."""
        try:
            user = self.create_user("root", policies=["root"])
        except errors.AlreadyExists:
            raise errors.FailedPrecondition(
                "already bootstrapped: recover a lost root token with 'runed bootstrap --reset' on the server host",
                reason="ALREADY_BOOTSTRAPPED",
            ) from None
        return self.issue_token(user, f"bootstrap-admin-{time.time_ns()}", description="bootstrap-admin")

    def reset_root(self) -> tuple[IssuedToken, int]:
        """Revoke every root token and issue a new one (``runed bootstrap --reset``)."""
        user = self.upsert_user("root", policies=["root"])
        revoked = self.revoke_tokens_of(user["id"])
        return self.issue_token(user, f"bootstrap-reset-{time.time_ns()}", description="bootstrap-reset"), revoked


def local_bootstrap(store: Store, data_dir: Path, *, reset: bool, actor: str = "local") -> tuple[IssuedToken, int]:
    """Bootstrap (or, with ``reset``, re-key root) straight on the data dir's store, without the API.

    Reaching the data dir is the proof of authority: this is how an operator who lost the root
    token recovers. Either way the audit log records it (``actor`` names who ran it), failures too.
    Returns the new token and how many root tokens were revoked.
    """
    command = "runed bootstrap --reset" if reset else "runed bootstrap"
    ident = Identity(store, load_server_key(data_dir))
    ident.seed_builtin_policies()
    try:
        issued, revoked = ident.reset_root() if reset else (ident.bootstrap(), 0)
    except errors.RuneError as e:
        _audit_local(store, actor, command, e.code.name, e.message)
        raise
    _audit_local(store, actor, command, "OK", f"issued root token {issued.id}; revoked {revoked} root token(s)")
    return issued, revoked


def _audit_local(store: Store, actor: str, command: str, code: str, detail: str) -> None:
    entry = AuditEntry(
        subject=actor,
        method=command,
        resource="admin",
        verb="bootstrap",
        namespace="",
        name="root",
        outcome="success" if code == "OK" else "failure",
        code=code,
        request_id="",
        peer="local",
        detail=detail[:300],
    )
    try:
        store.audit(entry)
    except Exception as e:  # the token exists by now: the operator still gets it, and is told
        log.error("cannot write the audit record of %s: %s", command, e)

"""Who is calling: the identity authentication resolves and authorization checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user with policies, resolved by authentication."""

    subject: str  # user name, e.g. "root"
    subject_id: str = ""
    subject_type: str = "user"
    policies: tuple[str, ...] = ()  # the user's policies
    # The token's own policies: a call needs the user's rules and these (empty: no further limit).
    scope: tuple[str, ...] = ()
    token_id: str = ""
    auth_method: str = "token"  # token | oidc | mtls | none

    @property
    def key(self) -> str:
        """Rate-limit bucket key: one bucket per credential."""
        return self.token_id or f"{self.auth_method}:{self.subject}"


ANONYMOUS = Principal(subject="anonymous", auth_method="none")

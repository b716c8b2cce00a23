"""``rune admin bootstrap``, ``token`` and ``user``: the root token, API tokens and the users they belong to."""

from __future__ import annotations

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.admin.shared import emit, fmt_option, unix, write_secret
from rune.cli.commands.common import pass_session, seconds
from rune.cli.output import table, to_dict


@click.command()
@click.option("--out-file", type=click.Path(dir_okay=False), help="Write the token here (0600) instead of printing it.")
@click.option("--login", "login_ctx", is_flag=True, help="Also save it as the current context.")
@pass_session
def bootstrap(s: Session, out_file: str | None, login_ctx: bool) -> None:
    """Mint a root token (first-time setup, from the runed host)."""
    resp = s.call("AdminService", "AdminBootstrap", pb2("admin").AdminBootstrapRequest())
    if out_file:
        write_secret(out_file, resp.token_secret)
        click.echo(f"root token {resp.token_id} written to {out_file}")
    else:
        click.echo(resp.token_secret)
    if login_ctx:
        cfg = s.config
        cfg.contexts["default"] = {"server": s.target, "token": resp.token_secret}
        cfg.current = "default"
        cfg.save()
        click.echo(f'context "default" saved in {cfg.path}', err=True)


@click.group()
def token() -> None:
    """Create, revoke and list tokens."""


@token.command("create")
@click.option("--name", required=True)
@click.option("--subject-id", default="", help="The subject's id or name.")
@click.option("--subject-name", default="")
@click.option("--subject-type", default="user", show_default=True)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    help="Scope the token to this policy (repeatable; within the subject's rights). A new subject gets them.",
)
@click.option("--description", default="")
@click.option("--ttl", default="0", help="Lifetime, e.g. 24h (0 = no expiry).")
@click.option("--out-file", type=click.Path(dir_okay=False))
@pass_session
def token_create(
    s: Session,
    name: str,
    subject_id: str,
    subject_name: str,
    subject_type: str,
    policies: tuple[str, ...],
    description: str,
    ttl: str,
    out_file: str | None,
) -> None:
    """Create a token; the secret is shown only once."""
    req = pb2("auth").CreateTokenRequest(
        name=name,
        subject_id=subject_id,
        subject_name=subject_name,
        subject_type=subject_type,
        policies=list(policies),
        ttl_seconds=int(seconds(ttl, "--ttl")),
        description=description,
    )
    resp = s.call("AuthService", "CreateToken", req)
    if out_file:
        write_secret(out_file, resp.secret)
        click.echo(f"token {resp.id} ({resp.name}) written to {out_file}")
    else:
        click.echo(resp.secret)


@token.command("revoke")
@click.option("--id", "token_id", required=True)
@pass_session
def token_revoke(s: Session, token_id: str) -> None:
    """Revoke a token by id."""
    s.call("AuthService", "RevokeToken", pb2("auth").RevokeTokenRequest(id=token_id))
    click.echo(f"token {token_id} revoked")


@token.command("list")
@fmt_option
@click.option("--json", "as_json", is_flag=True, hidden=True)
@pass_session
def token_list(s: Session, fmt: str, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    tokens = s.call("AdminService", "TokenList", pb2("admin").TokenListRequest()).tokens
    if emit([to_dict(t) for t in tokens], "json" if as_json else fmt):
        return
    rows = [
        [
            t.id,
            t.name,
            t.subject_id,
            ",".join(t.policies) or "*",
            unix(t.issued_at),
            unix(t.expires_at),
            "yes" if t.revoked else "no",
        ]
        for t in tokens
    ]
    # SCOPE "*": the token carries all of its user's rights.
    table(rows, ["ID", "NAME", "SUBJECT", "SCOPE", "ISSUED", "EXPIRES", "REVOKED"])


@click.group()
def user() -> None:
    """Create and list users."""


@user.command("create")
@click.option("--name", required=True)
@click.option("--email", default="")
@click.option("--policy", "policies", multiple=True)
@pass_session
def user_create(s: Session, name: str, email: str, policies: tuple[str, ...]) -> None:
    """Create (or update) a user."""
    req = pb2("admin").UserCreateRequest(name=name, email=email, policies=list(policies))
    u = s.call("AdminService", "UserCreate", req).user
    click.echo(f"user {u.name} ({u.id}) policies: {', '.join(u.policies) or '-'}")


@user.command("list")
@fmt_option
@pass_session
def user_list(s: Session, fmt: str) -> None:
    """List users."""
    users = s.call("AdminService", "UserList", pb2("admin").UserListRequest()).users
    if emit([to_dict(u) for u in users], fmt):
        return
    table(
        [[u.name, u.id, u.email or "-", ",".join(u.policies) or "-"] for u in users],
        ["NAME", "ID", "EMAIL", "POLICIES"],
    )

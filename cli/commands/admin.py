"""``rune admin``: bootstrap, tokens, users, policies, registries and the audit log."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import kv_pairs, pass_session, seconds
from rune.cli.errors import EXIT_INVALID, EXIT_USAGE, CliError
from rune.cli.output import dump, table, to_dict


def _write_secret(path: str, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)


def _unix(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def _emit(data: Any, fmt: str) -> bool:
    """Dump ``data`` when a structured format was asked for; True when done."""
    if fmt in ("json", "yaml"):
        dump(data, fmt)
        return True
    return False


fmt_option = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")


@click.group()
def admin() -> None:
    """Administration (admin RPCs are local-only unless runed allows remote admin)."""


@admin.command()
@click.option("--out-file", type=click.Path(dir_okay=False), help="Write the token here (0600) instead of printing it.")
@click.option("--login", "login_ctx", is_flag=True, help="Also save it as the current context.")
@pass_session
def bootstrap(s: Session, out_file: str | None, login_ctx: bool) -> None:
    """Mint a root token (first-time setup, from the runed host)."""
    resp = s.call("AdminService", "AdminBootstrap", pb2("admin").AdminBootstrapRequest())
    if out_file:
        _write_secret(out_file, resp.token_secret)
        click.echo(f"root token {resp.token_id} written to {out_file}")
    else:
        click.echo(resp.token_secret)
    if login_ctx:
        cfg = s.config
        cfg.contexts["default"] = {"server": s.target, "token": resp.token_secret}
        cfg.current = "default"
        cfg.save()
        click.echo(f'context "default" saved in {cfg.path}', err=True)


@admin.group()
def token() -> None:
    """Create, revoke and list tokens."""


@token.command("create")
@click.option("--name", required=True)
@click.option("--subject-id", default="")
@click.option("--subject-name", default="")
@click.option("--subject-type", default="user", show_default=True)
@click.option("--policy", "policies", multiple=True, help="Policy for a new subject (repeatable).")
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
        _write_secret(out_file, resp.secret)
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
    if _emit([to_dict(t) for t in tokens], "json" if as_json else fmt):
        return
    rows = [
        [t.id, t.name, t.subject_id, _unix(t.issued_at), _unix(t.expires_at), "yes" if t.revoked else "no"]
        for t in tokens
    ]
    table(rows, ["ID", "NAME", "SUBJECT", "ISSUED", "EXPIRES", "REVOKED"])


@admin.group()
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
    if _emit([to_dict(u) for u in users], fmt):
        return
    table(
        [[u.name, u.id, u.email or "-", ",".join(u.policies) or "-"] for u in users],
        ["NAME", "ID", "EMAIL", "POLICIES"],
    )


@admin.group()
def policy() -> None:
    """Manage RBAC policies."""


def _policy_from_file(path: str) -> Any:
    apb = pb2("admin")
    text = Path(path).read_text()
    try:
        import yaml

        data = yaml.safe_load(text)
    except Exception as e:
        raise CliError(f"{path}: not valid JSON/YAML: {e}", EXIT_INVALID) from e
    if not isinstance(data, dict) or not data.get("name"):
        raise CliError(f"{path}: a policy needs 'name' and 'rules'", EXIT_INVALID)
    unknown = set(data) - {"name", "description", "rules"}
    if unknown:
        raise CliError(f"{path}: unknown policy keys {', '.join(sorted(unknown))}", EXIT_INVALID)
    rules = []
    for r in data.get("rules") or []:
        if not isinstance(r, dict) or set(r) - {"resource", "verbs", "namespace"}:
            raise CliError(f"{path}: rules have keys resource, verbs, namespace", EXIT_INVALID)
        rules.append(
            apb.PolicyRule(resource=r.get("resource", ""), verbs=r.get("verbs", []), namespace=r.get("namespace", ""))
        )
    return apb.Policy(name=data["name"], description=data.get("description", ""), rules=rules)


@policy.command("create")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), required=True, help="JSON/YAML policy.")
@pass_session
def policy_create(s: Session, path: str) -> None:
    """Create (or replace) a policy from a file: {name, description, rules: [{resource, verbs, namespace}]}."""
    p = s.call("AdminService", "PolicyCreate", pb2("admin").PolicyCreateRequest(policy=_policy_from_file(path))).policy
    click.echo(f"policy {p.name} saved")


@policy.command("update")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), required=True)
@pass_session
def policy_update(s: Session, path: str) -> None:
    """Update a policy from a file."""
    p = s.call("AdminService", "PolicyUpdate", pb2("admin").PolicyUpdateRequest(policy=_policy_from_file(path))).policy
    click.echo(f"policy {p.name} updated")


@policy.command("list")
@fmt_option
@pass_session
def policy_list(s: Session, fmt: str) -> None:
    """List policies."""
    pols = s.call("AdminService", "PolicyList", pb2("admin").PolicyListRequest()).policies
    if _emit([to_dict(p) for p in pols], fmt):
        return
    rows = [
        [
            p.name,
            "yes" if p.builtin else "no",
            "; ".join(f"{r.resource}:{','.join(r.verbs)}@{r.namespace or '*'}" for r in p.rules),
        ]
        for p in pols
    ]
    table(rows, ["NAME", "BUILTIN", "RULES"])


@policy.command("get")
@click.argument("name")
@click.option("-o", "--output", "fmt", type=click.Choice(["json", "yaml"]), default="yaml")
@pass_session
def policy_get(s: Session, name: str, fmt: str) -> None:
    """Show one policy."""
    dump(to_dict(s.call("AdminService", "PolicyGet", pb2("admin").PolicyGetRequest(name=name)).policy), fmt)


@policy.command("delete")
@click.argument("name")
@pass_session
def policy_delete(s: Session, name: str) -> None:
    """Delete a policy."""
    s.call("AdminService", "PolicyDelete", pb2("admin").PolicyDeleteRequest(name=name))
    click.echo(f"policy {name} deleted")


def _subject_kwargs(subject: str, subject_type: str, pol: str) -> dict[str, str]:
    return {"subject_name": subject, "subject_kind": subject_type, "policy_name": pol}


@policy.command("attach")
@click.option("--subject", required=True, help="User name or id.")
@click.option("--subject-type", default="user")
@click.option("--policy", "pol", required=True)
@pass_session
def policy_attach(s: Session, subject: str, subject_type: str, pol: str) -> None:
    """Attach a policy to a subject."""
    req = pb2("admin").PolicyAttachToSubjectRequest(**_subject_kwargs(subject, subject_type, pol))
    s.call("AdminService", "PolicyAttachToSubject", req)
    click.echo(f"policy {pol} attached to {subject}")


@policy.command("detach")
@click.option("--subject", required=True)
@click.option("--subject-type", default="user")
@click.option("--policy", "pol", required=True)
@pass_session
def policy_detach(s: Session, subject: str, subject_type: str, pol: str) -> None:
    """Detach a policy from a subject."""
    req = pb2("admin").PolicyDetachFromSubjectRequest(**_subject_kwargs(subject, subject_type, pol))
    s.call("AdminService", "PolicyDetachFromSubject", req)
    click.echo(f"policy {pol} detached from {subject}")


@admin.group()
def registries() -> None:
    """Image registry credentials."""


@registries.command("list")
@fmt_option
@pass_session
def reg_list(s: Session, fmt: str) -> None:
    """List registries."""
    regs = s.call("AdminService", "ListRegistries", pb2("admin").ListRegistriesRequest()).registries
    if _emit([to_dict(r) for r in regs], fmt):
        return
    table(
        [[r.name, r.registry, r.auth.type or "-", r.auth.from_secret or "-"] for r in regs],
        ["NAME", "REGISTRY", "TYPE", "SECRET"],
    )


@registries.command("show")
@click.argument("name")
@pass_session
def reg_show(s: Session, name: str) -> None:
    """Show one registry (credentials masked by runed)."""
    dump(to_dict(s.call("AdminService", "GetRegistry", pb2("admin").GetRegistryRequest(name=name)).registry), "yaml")


def _registry(
    name: str, registry: str, typ: str, username: str, password: str, tok: str, region: str,
    from_secret: str, bootstrap_auth: bool, manage: str, immutable: bool, data: tuple[str, ...],
) -> Any:  # fmt: skip
    apb = pb2("admin")
    auth = apb.RegistryAuthConfig(
        type=typ, username=username, password=password, token=tok, region=region, from_secret=from_secret,
        bootstrap=bootstrap_auth, manage=manage, immutable=immutable, data=kv_pairs(data, "--data"),
    )  # fmt: skip
    return apb.RegistryConfig(name=name, registry=registry, auth=auth)


_REG_OPTS = [
    click.option("--name", required=True),
    click.option("--registry", default=""),
    click.option("--type", "typ", type=click.Choice(["", "basic", "token", "ecr", "dockerconfigjson"]), default=""),
    click.option("--username", default=""),
    click.option("--password", default=""),
    click.option("--token", "tok", default=""),
    click.option("--region", default=""),
    click.option("--from-secret", default=""),
    click.option("--bootstrap-auth", is_flag=True),
    click.option("--manage-auth", "manage", type=click.Choice(["", "create", "update", "ignore"]), default=""),
    click.option("--immutable", is_flag=True),
    click.option("--data", multiple=True, help="k=v (repeatable)."),
]


def _reg_options(f: Any) -> Any:
    for opt in reversed(_REG_OPTS):
        f = opt(f)
    return f


@registries.command("add")
@_reg_options
@pass_session
def reg_add(s: Session, /, **kw: Any) -> None:
    """Add a registry."""
    r = s.call("AdminService", "AddRegistry", pb2("admin").AddRegistryRequest(registry=_registry(**kw))).registry
    click.echo(f"registry {r.name} added")


@registries.command("update")
@_reg_options
@pass_session
def reg_update(s: Session, /, **kw: Any) -> None:
    """Update a registry."""
    r = s.call("AdminService", "UpdateRegistry", pb2("admin").UpdateRegistryRequest(registry=_registry(**kw))).registry
    click.echo(f"registry {r.name} updated")


@registries.command("remove")
@click.argument("name")
@pass_session
def reg_remove(s: Session, name: str) -> None:
    """Remove a registry."""
    s.call("AdminService", "RemoveRegistry", pb2("admin").RemoveRegistryRequest(name=name))
    click.echo(f"registry {name} removed")


@registries.command("bootstrap-auth")
@click.option("--name", default="")
@click.option("--type", "typ", default="")
@click.option("--all", "all_", is_flag=True)
@pass_session
def reg_bootstrap(s: Session, name: str, typ: str, all_: bool) -> None:
    """Create/update registry credential secrets from their configured data."""
    if not (name or typ or all_):
        raise CliError("give --name, --type or --all", EXIT_USAGE)
    req = pb2("admin").BootstrapAuthRequest(name=name, type=typ, all=all_)
    click.echo(f"updated {s.call('AdminService', 'BootstrapAuth', req).updated} registries")


@registries.command("test")
@click.argument("name")
@click.option("--image", "image_ref", default="")
@pass_session
def reg_test(s: Session, name: str, image_ref: str) -> None:
    """Check a registry's credentials."""
    resp = s.call("AdminService", "TestRegistry", pb2("admin").TestRegistryRequest(name=name, image_ref=image_ref))
    click.echo(f"{'ok' if resp.ok else 'failed'}: {resp.message}")
    if not resp.ok:
        sys.exit(1)


@registries.command("status")
@pass_session
def reg_status(s: Session) -> None:
    """Per-registry auth status."""
    regs = s.call("AdminService", "RegistriesStatus", pb2("admin").RegistriesStatusRequest()).registries
    rows = [
        [
            r.name,
            r.registry,
            r.type or "-",
            "yes" if r.auth_configured else "no",
            r.last_bootstrap_at or "-",
            r.last_error or "-",
        ]
        for r in regs
    ]
    table(rows, ["NAME", "REGISTRY", "TYPE", "AUTH", "BOOTSTRAPPED", "ERROR"])


@admin.command()
@click.option("--subject", default="", help="Only this subject's events.")
@click.option("--since-id", type=int, default=0)
@click.option("--limit", type=int, default=100, show_default=True)
@fmt_option
@pass_session
def audit(s: Session, subject: str, since_id: int, limit: int, fmt: str) -> None:
    """Show the audit log (mutations and secret reads, never values)."""
    req = pb2("admin").ListAuditEventsRequest(since_id=since_id, limit=limit, subject=subject)
    resp = s.call("AdminService", "ListAuditEvents", req)
    if _emit({"events": [to_dict(e) for e in resp.events], "nextSinceId": resp.next_since_id}, fmt):
        return
    rows = [
        [
            str(e.id),
            datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            e.subject or "-",
            e.method.rsplit("/", 1)[-1],
            f"{e.resource}/{e.name}" if e.name else e.resource,
            e.namespace or "-",
            e.code or e.outcome,
        ]
        for e in resp.events
    ]
    table(rows, ["ID", "TIME", "SUBJECT", "METHOD", "OBJECT", "NAMESPACE", "RESULT"])

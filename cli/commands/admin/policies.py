"""``rune admin policy``: RBAC policies from JSON/YAML files, and attaching them to subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.admin.shared import emit, fmt_option
from rune.cli.commands.common import pass_session
from rune.cli.errors import EXIT_INVALID, CliError
from rune.cli.output import dump, table, to_dict


@click.group()
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
    if emit([to_dict(p) for p in pols], fmt):
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

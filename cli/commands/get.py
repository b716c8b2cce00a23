"""``rune get``: list, show and watch objects in table, wide, JSON or YAML form."""

from __future__ import annotations

import sys
from typing import Any

import click

from rune.cli.client import Session
from rune.cli.commands import kinds
from rune.cli.commands.common import pass_session
from rune.cli.commands.kinds import KINDS, Kind
from rune.cli.commands.objects import get_object, list_objects
from rune.cli.commands.watch import print_changes
from rune.cli.complete import name_by_type
from rune.cli.output import FORMATS, dump, render, to_dict


def _sort(items: list[Any], kind: Kind, sort_by: str | None) -> list[Any]:
    if sort_by == "creationTime":
        return sorted(items, key=lambda i: str(kind.created(i)))
    if sort_by == "status":
        return sorted(items, key=lambda i: (kind.status(i), i.name))
    if sort_by == "name":
        return sorted(items, key=lambda i: (getattr(i, "namespace", ""), i.name))
    return items


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name", required=False, shell_complete=name_by_type("type_name"))
@click.option("-n", "--namespace", help="Namespace (default: the context's, else default).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("-l", "--selector", "labels", help="Label selector, e.g. app=web,tier!=db.")
@click.option("--field-selector", "fields", help="Field selector, e.g. status=Running.")
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("-w", "--watch", is_flag=True, help="After listing, print changes as they happen.")
@click.option("--sort-by", type=click.Choice(["name", "creationTime", "status"]))
@click.option("--no-headers", is_flag=True)
@click.option("--show-labels", is_flag=True, help="Add a LABELS column.")
@click.option("--show-values", is_flag=True, help="Secrets: print values (needs secrets:read).")
@click.option("--limit", "page_size", type=int, default=0, help="Page size used when fetching (all pages are read).")
@click.option("--service-name", "--service", "service", default="", help="Instances: only this service's.")
@pass_session
def get(
    s: Session,
    type_name: str,
    name: str | None,
    namespace: str | None,
    all_namespaces: bool,
    labels: str | None,
    fields: str | None,
    fmt: str,
    watch: bool,
    sort_by: str | None,
    no_headers: bool,
    show_labels: bool,
    show_values: bool,
    page_size: int,
    service: str,
) -> None:
    """List objects of TYPE (services, instances, namespaces, secrets, configmaps), or show NAME."""
    kind_name = kinds.resolve(type_name)
    kind = KINDS[kind_name]
    ns = "*" if all_namespaces else s.namespace(namespace)
    if name:
        one_ns = s.namespace(namespace)
        # With -w, that one object's changes after the revision it was read at (read before it, so none is lost).
        rev = list_objects(s, kind_name, one_ns, labels, fields, page_size, service)[1] if watch else 0
        obj = get_object(s, kind_name, name, one_ns, show_values)
        if fmt in ("json", "yaml"):
            dump(to_dict(obj), fmt)
        else:
            render([obj], fmt, kinds.with_ready(s, kind_name, one_ns, list(kind.columns), [obj]), kind.wide, no_headers)
        if watch:
            one = ",".join(x for x in (fields, f"name={getattr(obj, 'name', '') or name}") if x)
            sys.stdout.flush()
            print_changes(s, kind_name, one_ns, labels, one, rev, fmt)
        return
    items, rev = list_objects(s, kind_name, ns, labels, fields, page_size, service)
    # Instances come in id order; by name reads better (web-0, web-1, ...).
    items = _sort(items, kind, sort_by or ("name" if kind_name == "instances" else None))
    if kind_name == "secrets" and show_values:
        items = [get_object(s, "secrets", x.name, x.namespace, True) for x in items]
    columns = list(kind.columns)
    if all_namespaces and kind.all_ns_column:
        columns.insert(1, ("NAMESPACE", lambda o: o.namespace))
    if show_labels and kind_name in ("services", "namespaces") and not (fmt == "wide" and kind_name == "services"):
        columns.append(("LABELS", kinds.labels))
    if show_values and kind_name == "secrets" and fmt in ("table", "wide"):
        columns.append(("DATA", lambda o: ",".join(f"{k}={v}" for k, v in sorted(o.data.items()))))
    if not items and fmt in ("table", "wide") and not watch:
        where = "any namespace" if ns == "*" else f'namespace "{ns}"'
        sys.stderr.write(f"No {kind_name} found in {where}.\n")
    else:
        if fmt in ("table", "wide") and items:
            columns = kinds.with_ready(s, kind_name, ns, columns, items)
        render(items, fmt, columns, kind.wide, no_headers, list_key=kind_name)
    if watch:
        sys.stdout.flush()
        print_changes(s, kind_name, ns, labels, fields, rev, fmt)

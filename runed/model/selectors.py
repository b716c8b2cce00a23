"""Label selectors (equality and set-based, Kubernetes grammar) and field selectors, parsed once and matched."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from runed.core import validation
from runed.core.errors import FieldViolation

# Operators of a label requirement.
EQ = "="
NE = "!="
IN = "in"
NOTIN = "notin"
EXISTS = "exists"
NOT_EXISTS = "!"

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


class SelectorError(ValueError):
    """A selector that does not parse; the message says which part and why."""


@dataclass(frozen=True)
class Requirement:
    """One clause: ``key op values`` (values empty for exists / not exists)."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == EXISTS:
            return present
        if self.op == NOT_EXISTS:
            return not present
        if self.op in (EQ, IN):
            return present and labels[self.key] in self.values
        # != and notin also match objects that lack the key (Kubernetes semantics).
        return not present or labels[self.key] not in self.values


def _split_clauses(expr: str) -> list[str]:
    """Split on commas that are not inside a parenthesised value set."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced ')'")
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SelectorError("unbalanced '('")
    out.append("".join(cur))
    return out


def parse_labels(expr: str) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; an empty expression selects everything."""
    reqs: list[Requirement] = []
    if not expr.strip():
        return reqs
    for clause in _split_clauses(expr):
        if not clause.strip():
            raise SelectorError("empty clause")
        if m := _SET_RE.match(clause):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            if not values:
                raise SelectorError(f"{clause.strip()!r}: a value set needs at least one value")
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(clause):
            op = NE if m.group(2) == "!=" else EQ
            reqs.append(Requirement(m.group(1), op, frozenset([m.group(3)])))
        elif m := _EXISTS_RE.match(clause):
            reqs.append(Requirement(m.group(2), NOT_EXISTS if m.group(1) else EXISTS))
        else:
            raise SelectorError(f"cannot parse {clause.strip()!r}")
    return reqs


def from_map(values: Mapping[str, str]) -> list[Requirement]:
    """The upstream map form: every key must equal its value."""
    return [Requirement(k, EQ, frozenset([v])) for k, v in sorted(values.items())]


def parse_fields(expr: str) -> list[Requirement]:
    """Parse ``name=web,status!=Failed``: only =, == and != apply to fields."""
    reqs = parse_labels(expr)
    for r in reqs:
        if r.op not in (EQ, NE):
            raise SelectorError(f"field selector {r.key!r}: only =, == and != are supported")
    return reqs


@dataclass(frozen=True)
class Selector:
    """A compiled label + field selector; ``matches`` is cheap enough for every object of a list."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, labels: Mapping[str, str], fields: Mapping[str, str] | Callable[[], Mapping[str, str]]) -> bool:
        if not all(r.matches(labels) for r in self.labels):
            return False
        if not self.fields:
            return True
        values = fields() if callable(fields) else fields
        return all(r.matches(values) for r in self.fields)


def compile_selector(
    *,
    label_map: Mapping[str, str],
    label_expr: str,
    field_map: Mapping[str, str],
    field_expr: str,
) -> Selector:
    """Combine the map and expression forms (they AND together). Call :func:`check` first."""
    labels = from_map(label_map) + parse_labels(label_expr)
    # Field values compare case-insensitively (status=running matches "Running"): callers pass
    # lower-cased field values.
    fields = [
        Requirement(r.key, r.op, frozenset(v.lower() for v in r.values))
        for r in from_map(field_map) + parse_fields(field_expr)
    ]
    return Selector(tuple(labels), tuple(fields))


def check_scope(req: Any, allowed_fields: tuple[str, ...]) -> list[FieldViolation]:
    """Namespace scope and selectors of a List/Watch request: the same fields on every kind that
    has them (``namespace``, ``label_selector[_expr]``, ``field_selector[_expr]``)."""
    return validation.namespace_scope(req.namespace, "namespace") + check(
        label_map=req.label_selector,
        label_expr=req.label_selector_expr,
        field_map=req.field_selector,
        field_expr=req.field_selector_expr,
        allowed_fields=allowed_fields,
    )


def check_watch(req: Any, allowed_fields: tuple[str, ...]) -> list[FieldViolation]:
    """A watch request: its scope and selectors, and a non-negative starting revision."""
    out = check_scope(req, allowed_fields)
    if req.since_revision < 0:
        out.append(FieldViolation("since_revision", "must not be negative"))
    return out


def check(
    *,
    label_map: Mapping[str, str],
    label_expr: str,
    field_map: Mapping[str, str],
    field_expr: str,
    allowed_fields: tuple[str, ...],
    prefix: str = "",
) -> list[FieldViolation]:
    """Every problem with a request's selectors, with field paths (for VALIDATORS)."""
    out = validation.selector(label_map, f"{prefix}label_selector")
    out += validation.selector(field_map, f"{prefix}field_selector", allowed_fields)
    try:
        for r in parse_labels(label_expr):
            out += validation.label_key(r.key, f"{prefix}label_selector_expr")
    except SelectorError as e:
        out.append(FieldViolation(f"{prefix}label_selector_expr", str(e)))
    try:
        for r in parse_fields(field_expr):
            if r.key not in allowed_fields:
                out.append(
                    FieldViolation(
                        f"{prefix}field_selector_expr",
                        f"unsupported field {r.key!r}; supported: {', '.join(allowed_fields)}",
                    )
                )
    except SelectorError as e:
        out.append(FieldViolation(f"{prefix}field_selector_expr", str(e)))
    return out

"""HTTP routes generated from the ``google.api.http`` options in the proto descriptors."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2

from runed.pipeline import methods
from runed.pipeline.methods import Method

# A path variable, optionally with a pattern: ``{name}``, ``{service.namespace}``, ``{name=*}``.
_VAR_RE = re.compile(r"\{([a-zA-Z_][\w.]*)(?:=([^}]*))?\}")
HTTP_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class HttpRule:
    """One REST binding of an RPC: verb, path template and where the body goes."""

    method: Method
    verb: str  # upper case: GET, POST, ...
    template: str  # as written in the proto, e.g. /v1/namespaces/{namespace}/services/{name}
    regex: re.Pattern[str]
    path_fields: tuple[str, ...]  # dotted proto field paths bound from the path, in order
    body: str  # "" (no body), "*" (whole request) or a top-level field name

    def match(self, path: str) -> dict[str, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        return {f: v for f, v in zip(self.path_fields, m.groups(), strict=True)}

    @property
    def shape(self) -> str:
        """The template with its variables left blank (``/v1/namespaces/{}/services``): rules of one
        shape match the same paths, whatever their variables are called."""
        return _VAR_RE.sub("{}", self.template)


def openapi_param(field_path: str) -> str:
    """A field path as an OpenAPI parameter name: ``service.namespace`` -> ``service_namespace`` (tools
    choke on dots in parameter names)."""
    return field_path.replace(".", "_")


def _compile(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    fields: list[str] = []
    out: list[str] = []
    pos = 0
    for m in _VAR_RE.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        fields.append(m.group(1))
        pattern = m.group(2)
        # `**` spans segments; everything else is one segment. Names never contain ':' so a
        # trailing custom verb (`{name}:scale`) stays unambiguous.
        out.append("(.+)" if pattern == "**" else "([^/:]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$"), tuple(fields)


def _rules_of(m: Method) -> list[HttpRule]:
    opts = m.descriptor.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return []
    top: http_pb2.HttpRule = opts.Extensions[annotations_pb2.http]
    out: list[HttpRule] = []
    for rule in [top, *top.additional_bindings]:
        pattern = rule.WhichOneof("pattern")
        if pattern is None or pattern == "custom":
            continue
        template = getattr(rule, pattern)
        regex, fields = _compile(template)
        out.append(HttpRule(m, pattern.upper(), template, regex, fields, rule.body))
    return out


@functools.cache
def http_rules() -> tuple[HttpRule, ...]:
    """Every resource route, literal-heavy templates first so `/x:watch` wins over `/{name}`."""
    rules = [r for m in methods.all_methods() for r in _rules_of(m)]
    rules.sort(key=lambda r: (-r.template.count("/"), r.template.count("{"), -len(r.template)))
    return tuple(rules)


@functools.cache
def _buckets() -> dict[tuple[str, int], tuple[HttpRule, ...]]:
    # Variables never span '/', so a rule can only match paths with its own number of slashes.
    out: dict[tuple[str, int], list[HttpRule]] = {}
    for r in http_rules():
        # `**` spans segments: such rules are tried for every path (bucket -1).
        out.setdefault((r.verb, -1 if "**" in r.template else r.template.count("/")), []).append(r)
    return {k: tuple(v) for k, v in out.items()}


@functools.lru_cache(maxsize=4096)
def resolve(verb: str, path: str) -> tuple[HttpRule, dict[str, str]] | None:
    """The rule serving ``verb path`` and its path variables, or None (cached: hot paths repeat).

    The returned dict is shared between callers: read it, never change it.
    """
    buckets = _buckets()
    for key in ((verb, path.count("/")), (verb, -1)):
        for rule in buckets.get(key, ()):
            found = rule.match(path)
            if found is not None:
                return rule, found
    return None


def path_allows(path: str) -> list[str]:
    """HTTP verbs that have a rule for ``path`` (for 405 vs 404)."""
    return sorted({r.verb for r in http_rules() if r.match(path) is not None})


# Most routes a path that matches none is told of.
NEAREST = 3


def nearest(verb: str, path: str) -> list[str]:
    """The routes of ``verb`` sharing the most words with ``path`` (a path no route matches), best
    first: ``GET /v1/services`` is told of ``/v1/namespaces/{namespace}/services``, which a spelling
    distance would not find (namespaces are in the path here, not in a query)."""
    words = {w for w in path.strip("/").split("/") if w and w != "v1"}
    segments = len(path.strip("/").split("/"))
    scored = []
    for r in http_rules():
        if r.verb != verb:
            continue
        parts = r.template.strip("/").split("/")
        shared = len(words & {w for w in parts if "{" not in w})
        if shared:
            scored.append((-shared, abs(len(parts) - segments), r.template))
    return [t for _, _, t in sorted(set(scored))[:NEAREST]]


@functools.cache
def rpc_methods() -> dict[str, Method]:
    """``/rune.api.Service/Method`` -> method, for the RPC-style (and Connect) routes."""
    return {m.full_name: m for m in methods.all_methods()}

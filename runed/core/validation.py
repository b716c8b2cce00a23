"""Field validation helpers: each returns every violation it finds, with its field path.

Callers concatenate the lists from several helpers and raise one ``errors.invalid(*violations)``
so a client learns about every bad field in one round trip (the Kubernetes apiserver habit).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from runed.core.errors import FieldViolation

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
LABEL_PREFIX_MAX = 253
DEFAULT_KEY_MAX = 256
# Labels are for selecting, not for storage: a few dozen per object (each key and value is bounded,
# so this bounds their total size too). Kubernetes caps annotations at 256 KiB in all.
LABELS_MAX = 64

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(rf"^{_LABEL}$")
_DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# Kubernetes qualified-name part: alphanumeric at both ends, '-', '_' and '.' inside.
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kubernetes ConfigMap/Secret key rule: safe as a file name in a mounted directory.
_FILE_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")

_LABEL_HINT = "lowercase letters, digits and '-', starting and ending with a letter or digit"

# An error travels in gRPC trailers twice (percent-encoded message, base64 BadRequest details), and
# clients may drop trailers over 8 KiB: a hostile request with hundreds of bad map keys would lose
# its error. Every violation of an ordinary request fits; only a flood is cut short.
MAX_VIOLATION_COST = 1800
MAX_FIELD_CHARS = 100
MAX_DESCRIPTION_CHARS = 200


def _v(field: str, description: str) -> FieldViolation:
    return FieldViolation(field, description)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trailer_cost(text: str) -> int:
    """Bytes ``text`` takes in a grpc-message trailer: printable ASCII as is, the rest percent-encoded."""
    return sum(1 if " " <= c <= "~" else 3 * len(c.encode()) for c in text)


def bounded(violations: list[FieldViolation]) -> list[FieldViolation]:
    """Violations with clipped paths and descriptions, as many as fit in the budget, plus a count of the rest."""
    out: list[FieldViolation] = []
    used = 0
    for i, v in enumerate(violations):
        clipped = _v(_clip(v.field, MAX_FIELD_CHARS), _clip(v.description, MAX_DESCRIPTION_CHARS))
        used += _trailer_cost(clipped.field) + _trailer_cost(clipped.description)
        if used > MAX_VIOLATION_COST:
            out.append(_v("", f"and {len(violations) - i} more violations not shown"))
            break
        out.append(clipped)
    return out


def required(value: object, field: str) -> list[FieldViolation]:
    """The field must be set (non-empty string, non-empty collection, non-zero number)."""
    return [] if value else [_v(field, "is required")]


def max_length(value: str, field: str, limit: int) -> list[FieldViolation]:
    """``value`` is at most ``limit`` characters."""
    if len(value) > limit:
        return [_v(field, f"must be at most {limit} characters (got {len(value)})")]
    return []


REF_MAX = 253


def reference(value: str, field: str, *, allow_empty: bool = True) -> list[FieldViolation]:
    """A name or id that refers to a stored object: bounded and printable (it is echoed in NOT_FOUND)."""
    if not value:
        return [] if allow_empty else [_v(field, "is required")]
    if len(value) > REF_MAX:
        return [_v(field, f"must be at most {REF_MAX} characters (got {len(value)})")]
    if not value.isprintable():
        return [_v(field, "must not contain control characters")]
    return []


# Linux limits a single argv/envp string to 32 pages (MAX_ARG_STRLEN) and a path to PATH_MAX.
EXEC_STRING_MAX = 128 * 1024
EXEC_PATH_MAX = 4096
EXEC_ARGS_MAX = 4096


def exec_string(value: str, field: str, *, limit: int = EXEC_STRING_MAX) -> list[FieldViolation]:
    """A string handed to exec (command, argument, env value, path): no NUL byte, within the kernel's limits.

    Caught here because otherwise the spec is stored and only fails later, when the runner starts it.
    """
    if "\x00" in value:
        return [_v(field, "must not contain a NUL character")]
    if len(value.encode()) > limit:
        return [_v(field, f"must be at most {limit} bytes (got {len(value.encode())})")]
    return []


def exec_strings(values: Sequence[str], field: str) -> list[FieldViolation]:
    """An argument list: bounded in length, every item an ``exec_string``."""
    if len(values) > EXEC_ARGS_MAX:
        return [_v(field, f"must have at most {EXEC_ARGS_MAX} items (got {len(values)})")]
    out: list[FieldViolation] = []
    for i, value in enumerate(values):
        out += exec_string(value, f"{field}[{i}]")
    return out


def namespace_scope(value: str, field: str) -> list[FieldViolation]:
    """A namespace to list or watch in: empty (the default one), ``*`` (all of them) or a DNS-1123 label."""
    return [] if value == "*" else dns1123_label(value, field, allow_empty=True)


def _dns1123(
    value: str, field: str, allow_empty: bool, max_len: int, pattern: re.Pattern[str], what: str
) -> list[FieldViolation]:
    if not value:
        return [] if allow_empty else [_v(field, "is required")]
    if len(value) > max_len:
        return [_v(field, f"must be at most {max_len} characters (got {len(value)})")]
    if not pattern.match(value):
        return [_v(field, f"must be a DNS-1123 {what}, got {value!r}")]
    return []


def dns1123_label(value: str, field: str, *, allow_empty: bool = False) -> list[FieldViolation]:
    """A DNS-1123 label: 1-63 characters of ``[a-z0-9-]``, alphanumeric at both ends."""
    return _dns1123(value, field, allow_empty, DNS1123_LABEL_MAX, _DNS1123_LABEL_RE, f"label ({_LABEL_HINT})")


def dns1123_subdomain(value: str, field: str, *, allow_empty: bool = False) -> list[FieldViolation]:
    """A DNS-1123 subdomain: dot-separated labels, at most 253 characters in all."""
    return _dns1123(
        value,
        field,
        allow_empty,
        DNS1123_SUBDOMAIN_MAX,
        _DNS1123_SUBDOMAIN_RE,
        f"subdomain ({_LABEL_HINT}, dot-separated)",
    )


def label_key(key: str, field: str) -> list[FieldViolation]:
    """A Kubernetes label key: optional DNS-1123 subdomain prefix and '/', then a name of <= 63 chars."""
    if not key:
        return [_v(field, "label key must not be empty")]
    prefix, slash, name = key.rpartition("/")
    out: list[FieldViolation] = []
    if slash:
        if not prefix:
            out.append(_v(field, f"label key {key!r} has an empty prefix before '/'"))
        elif len(prefix) > LABEL_PREFIX_MAX or not _DNS1123_SUBDOMAIN_RE.match(prefix):
            out.append(_v(field, f"label key prefix {prefix!r} must be a DNS-1123 subdomain"))
    if not name:
        out.append(_v(field, f"label key {key!r} has an empty name"))
    elif len(name) > LABEL_VALUE_MAX:
        out.append(_v(field, f"label key name must be at most {LABEL_VALUE_MAX} characters (got {len(name)})"))
    elif not _QUALIFIED_NAME_RE.match(name):
        out.append(_v(field, f"label key name {name!r} must be alphanumeric at both ends with '-', '_' or '.' inside"))
    return out


def label_value(value: str, field: str) -> list[FieldViolation]:
    """A Kubernetes label value: empty, or <= 63 chars, alphanumeric ends, '-', '_' and '.' inside."""
    if not value:
        return []
    if len(value) > LABEL_VALUE_MAX:
        return [_v(field, f"label value must be at most {LABEL_VALUE_MAX} characters (got {len(value)})")]
    if not _QUALIFIED_NAME_RE.match(value):
        return [_v(field, f"label value {value!r} must be alphanumeric at both ends with '-', '_' or '.' inside")]
    return []


def labels(values: Mapping[str, str], field: str) -> list[FieldViolation]:
    """At most :data:`LABELS_MAX` labels, every key and value valid; paths look like ``namespace.labels[app]``."""
    if len(values) > LABELS_MAX:
        # One violation for the map: checking ten thousand keys would only bury it.
        return [_v(field, f"must have at most {LABELS_MAX} labels (got {len(values)})")]
    out: list[FieldViolation] = []
    for k, val in values.items():
        path = f"{field}[{k}]"
        out += label_key(k, path)
        out += label_value(val, path)
    return out


def env_var_name(key: str, field: str) -> list[FieldViolation]:
    """A POSIX-shell-safe environment variable name: ``[A-Za-z_][A-Za-z0-9_]*``."""
    if not key:
        return [_v(field, "must not be empty")]
    if not _ENV_VAR_RE.match(key):
        return [_v(field, f"{key!r} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    return []


def file_name_key(key: str, field: str, *, max_len: int = DEFAULT_KEY_MAX) -> list[FieldViolation]:
    """A data key usable as a file name in a mount: ``[-._a-zA-Z0-9]+``, not ``.``/``..``, bounded.

    Every valid environment variable name is also a valid key, so one key can be imported as an
    env var (``envFrom``) or mounted as a file.
    """
    if not key:
        return [_v(field, "key must not be empty")]
    if len(key) > max_len:
        return [_v(field, f"key must be at most {max_len} characters (got {len(key)})")]
    if key in (".", "..") or key.startswith(".."):
        return [_v(field, f"key {key!r} must not be '.' or start with '..'")]
    if not _FILE_KEY_RE.match(key):
        return [_v(field, "key must consist of letters, digits, '-', '_' or '.' (usable as a file name)")]
    return []


def data_map(
    data: Mapping[str, str], field: str, *, max_bytes: int, max_key_len: int = DEFAULT_KEY_MAX
) -> list[FieldViolation]:
    """Keys valid as file/env names, values without NUL, the total size (keys + values, UTF-8) within ``max_bytes``.

    Messages never quote values: this also validates secret data.
    """
    out: list[FieldViolation] = []
    total = 0
    for k, val in data.items():
        # Only a bounded prefix of a bad key goes into the path: keys are not secret, but huge ones
        # would bloat the error.
        out += file_name_key(k, f"{field}[{k[:64]}]", max_len=max_key_len)
        # A value may become an environment variable (envFrom), and exec refuses a NUL there: the
        # instance would fail at start, far from the request that stored it.
        if "\x00" in val:
            out.append(_v(f"{field}[{k[:64]}]", "value must not contain a NUL character"))
        total += len(k.encode()) + len(val.encode())
    if total > max_bytes:
        out.append(_v(field, f"total size must be at most {max_bytes} bytes (got {total})"))
    return out


def selector(
    values: Mapping[str, str], field: str, allowed_fields: tuple[str, ...] | None = None
) -> list[FieldViolation]:
    """A label selector (valid label keys) or, with ``allowed_fields``, a field selector."""
    out: list[FieldViolation] = []
    for k in values:
        if allowed_fields is not None:
            if k not in allowed_fields:
                out.append(_v(f"{field}[{k}]", f"unsupported field; supported: {', '.join(allowed_fields)}"))
        else:
            out += label_key(k, f"{field}[{k}]")
    return out

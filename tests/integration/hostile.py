"""Hostile protobuf requests built from the descriptors: seeded, repeatable, garbage or one poisoned field."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, cast

from google.protobuf import descriptor, message

from runed.pipeline import methods

FD = descriptor.FieldDescriptor

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    "x" * 100 * 1024,
    "a" * 300,
    "\x00",
    "nul\x00inside",
    "\x01\x07\x1b[31m\x7f",
    "line\nbreak\r\n",
    "ünïcødé-☃-\U0001d518-\u202e",
    "../../etc/passwd",
    "..",
    ".",
    "/",
    "a/b",
    "UPPER",
    "has space",
    " ",
    "-leading",
    "trailing-",
    "*",
    "%00%2e%2e",
    "${HOME}$(id)`id`",
    "' OR 1=1 --",
    '{"json": [1, 2]}',
    "default",
    "9" * 40,
    "-1",
)
INT_LIMITS: dict[int, tuple[int, ...]] = {
    FD.TYPE_INT32: (-1, -(2**31), 2**31 - 1, 0),
    FD.TYPE_SINT32: (-1, -(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-1, -(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-1, -(2**63), 2**63 - 1, 0),
    FD.TYPE_SINT64: (-1, -(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-1, -(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1, 2**31),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1, 2**63),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOATS = (float("nan"), float("inf"), float("-inf"), -1.0, 1e308, -0.0)
MAX_DEPTH = 4


def _fields(msg: message.Message) -> list[descriptor.FieldDescriptor]:
    """The message's field descriptors (the stubs type DESCRIPTOR as a union with upb's own class)."""
    return list(cast(descriptor.Descriptor, msg.DESCRIPTOR).fields)


def _scalar(rng: random.Random, fd: descriptor.FieldDescriptor, short: bool) -> Any:
    t = fd.type
    if t == FD.TYPE_STRING:
        value = rng.choice(HOSTILE_STRINGS)
        return value[:300] if short else value
    if t == FD.TYPE_BYTES:
        return rng.choice((b"", b"\xff\xfe\x00", b"\x00" * (300 if short else 100 * 1024)))
    if t == FD.TYPE_BOOL:
        return rng.choice((True, False))
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice(FLOATS)
    if t == FD.TYPE_ENUM:
        # Numbers the enum does not define (proto3 enums are open, so they reach the server).
        assert fd.enum_type is not None
        return rng.choice((-1, 999, 2**31 - 1, len(fd.enum_type.values)))
    return rng.choice(INT_LIMITS[t])


def _fill(rng: random.Random, msg: message.Message, depth: int = 0, short: bool = False) -> None:
    """Set a random subset (sometimes all) of ``msg``'s fields to hostile values, recursively.

    Inside repeated fields and maps strings stay short, so a request stays under the server's
    receive limit and reaches the handler (the oversized case has its own test).
    """
    fields = _fields(msg)
    everything = rng.random() < 0.4
    for fd in fields:
        if not everything and rng.random() < 0.4:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            _fill_map(rng, getattr(msg, fd.name), fd.message_type, depth)
        elif fd.is_repeated:
            items = rng.choice((1, 3, 200))
            container = getattr(msg, fd.name)
            for _ in range(items if depth < 2 else 1):
                if fd.message_type is not None:
                    if depth < MAX_DEPTH:
                        _fill(rng, container.add(), depth + 1, short=True)
                else:
                    container.append(_scalar(rng, fd, short=True))
        elif fd.message_type is not None:
            if depth < MAX_DEPTH:
                _fill(rng, getattr(msg, fd.name), depth + 1, short)
        else:
            setattr(msg, fd.name, _scalar(rng, fd, short))


def _fill_map(rng: random.Random, target: Any, entry: descriptor.Descriptor, depth: int) -> None:
    key_fd, value_fd = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for i in range(rng.choice((1, 5, 100))):
        key = _scalar(rng, key_fd, short=True)
        if isinstance(key, str) and rng.random() < 0.5:
            key = f"{key}{i}"
        if value_fd.message_type is not None:
            if depth < MAX_DEPTH:
                _fill(rng, target[key], depth + 1, short=True)
        else:
            target[key] = _scalar(rng, value_fd, short=True)


def _plausible(msg: message.Message, depth: int = 0) -> None:
    """Set only the identifying fields (names, namespaces, ids) to ordinary values.

    Other fields stay empty, so the one poisoned field is what a validator or handler has to face.
    """
    for fd in msg.DESCRIPTOR.fields:
        # Only the first member of a oneof: setting the others would replace it.
        if fd.containing_oneof is not None and fd.containing_oneof.fields[0] is not fd:
            continue
        if fd.message_type is not None:
            if not fd.is_repeated and depth < 2:
                _plausible(getattr(msg, fd.name), depth + 1)
        elif fd.type == FD.TYPE_STRING and fd.is_repeated:
            if fd.name == "command":
                getattr(msg, fd.name).append("true")
        elif fd.type == FD.TYPE_STRING:
            if fd.name == "namespace":
                setattr(msg, fd.name, "default")
            elif fd.name in ("name", "id", "resource_target") or fd.name.endswith(("_name", "_id")):
                setattr(msg, fd.name, "fuzz-a")
            elif fd.name == "command":
                # A service spec needs something to run; ``true`` exits at once and harms nothing.
                setattr(msg, fd.name, "true")
            elif fd.name == "runtime":
                setattr(msg, fd.name, "process")


def _poison(rng: random.Random, msg: message.Message, depth: int = 0) -> None:
    """Replace one field, somewhere down the tree, with a hostile value."""
    fields = _fields(msg)
    nested = [f for f in fields if f.message_type is not None and not f.message_type.GetOptions().map_entry]
    # Specs live in nested messages: aim there more often than at the flat options beside them.
    fd = rng.choice(nested if nested and rng.random() < 0.7 else fields)
    is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
    if fd.message_type is not None and not is_map and depth < MAX_DEPTH and rng.random() < 0.7:
        child = getattr(msg, fd.name)
        if fd.is_repeated:
            child = child[0] if len(child) else child.add()
        if child.DESCRIPTOR.fields:
            _poison(rng, child, depth + 1)
            return
    msg.ClearField(fd.name)
    # A random fill of the same message type until it happens to set this field.
    for _ in range(50):
        shell = type(msg)()
        _fill(rng, shell, depth)
        if _set_in(shell, fd):
            break
    if fd.is_repeated or is_map:
        getattr(msg, fd.name).MergeFrom(getattr(shell, fd.name))
    elif fd.message_type is not None:
        getattr(msg, fd.name).CopyFrom(getattr(shell, fd.name))
    else:
        setattr(msg, fd.name, getattr(shell, fd.name))


def _set_in(msg: message.Message, fd: descriptor.FieldDescriptor) -> bool:
    return any(f is fd for f, _ in msg.ListFields())


def hostile_requests(method: methods.Method, count: int) -> Iterator[message.Message]:
    """The empty message, then ``count - 1`` seeded hostile ones (same seed, same requests).

    Half are garbage throughout; half are ordinary but for one poisoned field, which reaches
    deeper into the handlers than a request every check rejects at its first field.
    """
    rng = random.Random(f"bad-input:{method.full_name}")
    yield method.request_cls()
    for i in range(count - 1):
        req = method.request_cls()
        if i % 2 and req.DESCRIPTOR.fields:
            _plausible(req)
            _poison(rng, req)
        else:
            _fill(rng, req)
        yield req

"""The compiled protos must match the upstream rune API facts, field by field (additions allowed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from runed.pipeline import methods

FACTS = json.loads((Path(__file__).parent.parent / "data" / "rune-api-facts.json").read_text())

SCALAR_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
}


def _files() -> dict[str, descriptor.FileDescriptor]:
    return {m.DESCRIPTOR.name: m.DESCRIPTOR for m in methods.pb2_modules().values()}


def _type_name(f: FieldDescriptor) -> str:
    if f.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        assert f.message_type is not None
        return f.message_type.name
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        return f.enum_type.name
    return SCALAR_NAMES[f.type]


def _describe_field(f: FieldDescriptor) -> dict[str, Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return {
            "type": f"map<{_type_name(k)},{_type_name(v)}>",
            "label": "map",
            "key_type": _type_name(k),
            "value_type": _type_name(v),
        }
    label = "repeated" if f.is_repeated else "optional"
    oneof = f.containing_oneof.name if f.containing_oneof and not f.containing_oneof.name.startswith("_") else None
    kind = "message" if f.message_type else ("enum" if f.enum_type else "scalar")
    return {"type": _type_name(f), "label": label, "kind": kind, "oneof": oneof}


def contract_differences() -> list[str]:
    """Every way our compiled descriptors differ from the facts file."""
    diffs: list[str] = []
    files = _files()
    pkg = FACTS["package"]
    all_messages: dict[str, descriptor.Descriptor] = {}
    all_enums: dict[str, descriptor.EnumDescriptor] = {}
    all_services: dict[str, descriptor.ServiceDescriptor] = {}
    for fd in files.values():
        if fd.package != pkg:
            diffs.append(f"{fd.name}: package {fd.package!r}, want {pkg!r}")
        all_messages.update(fd.message_types_by_name)
        all_enums.update(fd.enum_types_by_name)
        all_services.update(fd.services_by_name)

    for path, info in FACTS["files"].items():
        found = files.get(path)
        if found is None:
            diffs.append(f"file {path}: missing")
            continue
        for kind, have in (
            ("messages", found.message_types_by_name),
            ("enums", found.enum_types_by_name),
            ("services", found.services_by_name),
        ):
            for name in info[kind]:
                if name not in have:
                    diffs.append(f"{path}: {kind[:-1]} {name} is not defined in this file")
        deps = sorted(d.name for d in found.dependencies if d.name.startswith("pkg/api/proto/"))
        for imp in info["imports"]:
            if imp not in deps:
                diffs.append(f"{path}: missing import {imp}")

    for name, fields in FACTS["messages"].items():
        msg = all_messages.get(name)
        if msg is None:
            diffs.append(f"message {name}: missing")
            continue
        for want in fields:
            f = msg.fields_by_number.get(want["number"])
            where = f"{name}.{want['name']} (#{want['number']})"
            if f is None:
                diffs.append(f"{where}: missing")
                continue
            if f.name != want["name"]:
                diffs.append(f"{where}: named {f.name!r}")
            if f.json_name != want["json_name"]:
                diffs.append(f"{where}: json_name {f.json_name!r}, want {want['json_name']!r}")
            got = _describe_field(f)
            for key in ("type", "label", "kind", "oneof", "key_type", "value_type"):
                if key in want and key in got and got[key] != want[key]:
                    diffs.append(f"{where}: {key} {got[key]!r}, want {want[key]!r}")
            if want["label"] == "map" and got["label"] != "map":
                diffs.append(f"{where}: not a map")

    for name, values in FACTS["enums"].items():
        en = all_enums.get(name)
        if en is None:
            diffs.append(f"enum {name}: missing")
            continue
        for vname, number in values.items():
            v = en.values_by_name.get(vname)
            if v is None:
                diffs.append(f"enum {name}.{vname}: missing")
            elif v.number != number:
                diffs.append(f"enum {name}.{vname}: number {v.number}, want {number}")

    for sname, rpcs in FACTS["services"].items():
        svc = all_services.get(sname)
        if svc is None:
            diffs.append(f"service {sname}: missing")
            continue
        for mname, want in rpcs.items():
            m = svc.methods_by_name.get(mname)
            if m is None:
                diffs.append(f"rpc {sname}.{mname}: missing")
                continue
            if m.input_type.name != want["request"]:
                diffs.append(f"rpc {sname}.{mname}: request {m.input_type.name}, want {want['request']}")
            if m.output_type.name != want["response"]:
                diffs.append(f"rpc {sname}.{mname}: response {m.output_type.name}, want {want['response']}")
            if m.client_streaming != want["client_streaming"] or m.server_streaming != want["server_streaming"]:
                diffs.append(f"rpc {sname}.{mname}: streaming shape differs")
            if f"/{pkg}.{sname}/{mname}" != want["full_method"]:
                diffs.append(f"rpc {sname}.{mname}: path differs from {want['full_method']}")
    return diffs


def test_protos_match_upstream_contract() -> None:
    diffs = contract_differences()
    assert not diffs, "contract differences:\n" + "\n".join(diffs)


def test_counts_at_least_upstream() -> None:
    counts = FACTS["counts"]
    ms = methods.all_methods()
    # runed adds services and files of its own (NodeService in node.proto); none may be missing.
    assert len({m.service for m in ms}) >= counts["services"]
    assert len(ms) >= counts["rpcs"]
    files = _files()
    assert len(files) >= counts["files"]
    assert sum(len(fd.message_types_by_name) for fd in files.values()) >= counts["messages"]
    assert sum(len(fd.enum_types_by_name) for fd in files.values()) >= counts["enums"]


def test_checker_notices_a_renumbered_field() -> None:
    """The comparison itself must be able to fail: tamper with a copy of the facts."""
    original = FACTS["messages"]["Service"][0]["number"]
    try:
        FACTS["messages"]["Service"][0]["number"] = 999
        diffs = contract_differences()
    finally:
        FACTS["messages"]["Service"][0]["number"] = original
    assert any("Service.id (#999): missing" in d for d in diffs)

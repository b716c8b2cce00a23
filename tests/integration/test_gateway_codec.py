"""The gateway's JSON codec: fast protojson output equals MessageToDict; path/query binding rules."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message

from rune.gateway import codec, routes
from runed.pipeline import methods

INT64 = (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64)


def _sample(f: Any) -> Any:
    t = f.type
    if t == F.TYPE_STRING:
        return "s"
    if t == F.TYPE_BOOL:
        return True
    if t == F.TYPE_BYTES:
        return b"\x00\xffab"
    if t == F.TYPE_ENUM:
        return f.enum_type.values[-1].number
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return 0.1
    if t in INT64:
        return 123456789012
    return -5 if t in (F.TYPE_INT32, F.TYPE_SINT32) else 5


def _fill(msg: Message, depth: int = 0) -> None:
    """Set every field (one member per oneof), nested messages down to depth 3."""
    for f in msg.DESCRIPTOR.fields:
        if f.containing_oneof is not None and f.containing_oneof.fields[0] is not f:
            continue
        value: Any = getattr(msg, f.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            key = True if kf.type == F.TYPE_BOOL else ("k" if kf.type == F.TYPE_STRING else 7)
            if vf.message_type is None:
                value[key] = _sample(vf)
            elif depth < 3:
                _fill(value[key], depth + 1)
        elif f.message_type is not None:
            if depth < 3:
                _fill(value.add() if f.is_repeated else value, depth + 1)
        elif f.is_repeated:
            value.extend([_sample(f), _sample(f)])
        else:
            setattr(msg, f.name, _sample(f))


def _all_message_classes() -> list[type[Message]]:
    seen: dict[str, type[Message]] = {}
    for m in methods.all_methods():
        for cls in (m.request_cls, m.response_cls):
            seen.setdefault(cls.DESCRIPTOR.full_name, cls)
    return list(seen.values())


@pytest.mark.parametrize("filled", [False, True])
def test_fast_json_equals_message_to_dict_for_every_message(filled: bool) -> None:
    for cls in _all_message_classes():
        msg = cls()
        if filled:
            _fill(msg)
        want = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
        assert codec.to_dict(msg) == want, cls.DESCRIPTOR.full_name


def test_binding_path_query_and_body() -> None:
    from rune.api import namespace_pb2, secret_pb2, service_pb2

    req = codec.build_request(service_pb2.GetServiceRequest, path={"namespace": "ns", "name": "web"})
    assert isinstance(req, service_pb2.GetServiceRequest)
    assert (req.namespace, req.name) == ("ns", "web")

    req = codec.build_request(
        service_pb2.ListServicesRequest,
        path={"namespace": "ns"},
        query=[("labelSelector[app]", "web"), ("paging.limit", "5"), ("field_selector[status]", "running")],
    )
    assert isinstance(req, service_pb2.ListServicesRequest)
    assert dict(req.label_selector) == {"app": "web"} and req.paging.limit == 5
    assert dict(req.field_selector) == {"status": "running"}

    req = codec.build_request(
        secret_pb2.CreateSecretRequest,
        body={"name": "db", "data": {"k": "v"}},
        body_field="secret",
        path={"secret.namespace": "prod"},
        query=[("ensureNamespace", "true")],
    )
    assert isinstance(req, secret_pb2.CreateSecretRequest)
    assert (req.secret.name, req.secret.namespace, req.ensure_namespace) == ("db", "prod", True)

    # The path wins over the body for the same field.
    req = codec.build_request(
        namespace_pb2.GetNamespaceRequest, body={"name": "body"}, body_field="*", path={"name": "path"}
    )
    assert isinstance(req, namespace_pb2.GetNamespaceRequest)
    assert req.name == "path"

    with pytest.raises(codec.BadRequest, match="query parameters are not accepted"):
        codec.build_request(
            namespace_pb2.GetNamespaceRequest, body={}, body_field="*", query=[("name", "x")], query_allowed=False
        )
    with pytest.raises(codec.BadRequest, match="expected an integer"):
        codec.build_request(service_pb2.ListServicesRequest, query=[("paging.limit", "many")])
    with pytest.raises(codec.BadRequest, match=r"nope: unknown field \(ListServicesRequest has "):
        codec.build_request(service_pb2.ListServicesRequest, query=[("nope", "1")])
    # The field meant, as the body decoder words it.
    with pytest.raises(codec.BadRequest, match=r'paging.limt: unknown field \(did you mean "limit"\?\)'):
        codec.build_request(service_pb2.ListServicesRequest, query=[("paging.limt", "1")])


def test_routes_resolve_custom_verbs_and_collections() -> None:
    found = routes.resolve("POST", "/v1/namespaces/default/services/web:scale")
    assert found is not None
    assert found[0].method.name == "ScaleService" and found[1] == {"namespace": "default", "name": "web"}
    found = routes.resolve("GET", "/v1/namespaces:watch")
    assert found is not None and found[0].method.name == "WatchNamespaces"
    found = routes.resolve("GET", "/v1/namespaces/default")
    assert found is not None and found[0].method.name == "GetNamespace"
    assert routes.resolve("GET", "/v1/namespaces/default/services/web/extra/deep") is None
    assert routes.path_allows("/v1/namespaces/default/services/web") == ["DELETE", "GET", "PUT"]

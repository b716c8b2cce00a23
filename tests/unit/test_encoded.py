"""A response in its wire form (runed.pipeline.encoded) decodes to the message it stands for."""

from __future__ import annotations

from google.protobuf import empty_pb2
from google.protobuf.unknown_fields import UnknownFieldSet

from rune.api import common_pb2, instance_pb2, service_pb2
from runed.pipeline import encoded


def _instance(i: int, env: int) -> instance_pb2.Instance:
    inst = instance_pb2.Instance(id=f"web-{i}", name=f"web-{i}", namespace="default", pid=1000 + i)
    inst.environment.update({f"K{k}": "v" * k for k in range(env)})
    inst.metadata.restart_count = i
    return inst


def test_joined_items_and_fields_are_the_built_message() -> None:
    # Items of 0 B (an empty message), under 128 B (one length byte) and of several KB (two).
    items = [instance_pb2.Instance(), _instance(1, 0), _instance(2, 3), _instance(3, 120)]
    assert {len(i.SerializeToString()) for i in items} & {0} and max(i.ByteSize() for i in items) > 128 * 16
    rest = instance_pb2.ListInstancesResponse(next_page_token="tok", revision=7, status=common_pb2.Status(message="m"))
    rest.paging.limit, rest.paging.offset = 4, 2
    got = encoded.joined(
        instance_pb2.ListInstancesResponse,
        [encoded.framed(instance_pb2.ListInstancesResponse.INSTANCES_FIELD_NUMBER, i) for i in items],
        rest,
    )
    built = instance_pb2.ListInstancesResponse(instances=items)
    built.MergeFrom(rest)
    assert got.cls is instance_pb2.ListInstancesResponse
    assert got.message() == built
    assert list(got.message().instances) == items


def test_an_empty_page_is_the_other_fields_alone() -> None:
    rest = service_pb2.ListServicesResponse(revision=3)
    got = encoded.joined(service_pb2.ListServicesResponse, [], rest)
    assert got.data == rest.SerializeToString()
    assert got.message() == rest


def test_framing_is_what_protobuf_parses_as_that_field() -> None:
    # Field numbers past 15 take a two-byte tag, past 2047 three; lengths past 127 two bytes.
    item = _instance(1, 60)
    assert item.ByteSize() > 127
    for number in (1, 15, 16, 2047, 2048, 2**29 - 1):
        unknown = UnknownFieldSet(empty_pb2.Empty.FromString(encoded.framed(number, item)))
        fields = [unknown[k] for k in range(len(unknown))]
        assert [(f.field_number, f.wire_type) for f in fields] == [(number, 2)]
        assert instance_pb2.Instance.FromString(fields[0].data) == item

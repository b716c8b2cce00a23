"""ListServices pages are built from revision-keyed caches: they must still show every write at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rune.api import service_pb2
from tests.harness import Runed, run_runed
from tests.integration.services import create, sleeper, stub_of
from tests.support import Metadata, bootstrap_metadata


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    with run_runed(Path(tmp_path_factory.mktemp("pages")) / "data", role="grpc") as r:
        yield r


def _page(api: Runed, md: Metadata) -> dict[str, service_pb2.Service]:
    resp = stub_of(api).ListServices(service_pb2.ListServicesRequest(namespace="default", page_size=2), metadata=md)
    return {s.name: s for s in resp.services}


def test_a_page_shows_each_write_right_away(api: Runed) -> None:
    md = bootstrap_metadata(api.channel())
    stub = stub_of(api)
    for name in ("a", "b", "c"):
        create(stub, md, sleeper(name, labels={"v": "1"}, scale=0))
    assert {n: s.labels["v"] for n, s in _page(api, md).items()} == {"a": "1", "b": "1"}
    assert _page(api, md) == _page(api, md)
    # A spec change is a new revision: the next page shows it.
    svc = sleeper("b", labels={"v": "2"}, scale=0)
    stub.UpdateService(service_pb2.UpdateServiceRequest(service=svc), metadata=md)
    assert {n: s.labels["v"] for n, s in _page(api, md).items()} == {"a": "1", "b": "2"}
    stub.ScaleService(service_pb2.ScaleServiceRequest(name="a", namespace="default", scale=2), metadata=md)
    got = stub.GetService(service_pb2.GetServiceRequest(name="a", namespace="default"), metadata=md).service
    assert {n: s.scale for n, s in _page(api, md).items()} == {"a": got.scale, "b": 0}
    assert _page(api, md)["a"] == got
    # Label selectors read the same cached records.
    resp = stub.ListServices(
        service_pb2.ListServicesRequest(namespace="default", page_size=5, label_selector={"v": "2"}), metadata=md
    )
    assert [s.name for s in resp.services] == ["b"]

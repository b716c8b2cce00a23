"""Every RPC in the descriptors has a handler, an RBAC entry, a validator (or an explicit none) and a REST route."""

from __future__ import annotations

import pytest

from rune.gateway import routes as http_routes
from runed.api import routes
from runed.auth import rbac
from runed.pipeline.methods import all_methods
from runed.pipeline.stages import build_routes

METHODS = [m.full_name for m in all_methods()]


def test_contract_has_at_least_the_upstream_57_rpcs() -> None:
    assert len(METHODS) >= 57


@pytest.mark.parametrize("full_name", METHODS)
def test_method_is_fully_wired(full_name: str) -> None:
    route = build_routes(routes.HANDLERS, routes.VALIDATORS)[full_name]
    assert full_name in rbac.TABLE, f"{full_name}: no RBAC entry"
    assert route.access is rbac.TABLE[full_name]
    assert route.handler is not None, f"{full_name}: no handler in runed.api.routes.HANDLERS"
    assert full_name in routes.VALIDATORS, f"{full_name}: no VALIDATORS entry (use None for 'no validation')"
    assert route.validator is routes.VALIDATORS[full_name]
    with_rest = {r.method.full_name for r in http_routes.http_rules()}
    assert full_name in with_rest or full_name in routes.GRPC_ONLY, (
        f"{full_name}: no google.api.http route (mark it in runed.api.routes.GRPC_ONLY if gRPC-only on purpose)"
    )


def test_handler_table_has_no_stale_entries() -> None:
    assert set(routes.HANDLERS) <= set(METHODS), set(routes.HANDLERS) - set(METHODS)
    assert set(routes.VALIDATORS) <= set(METHODS), set(routes.VALIDATORS) - set(METHODS)
    assert routes.GRPC_ONLY <= set(METHODS), routes.GRPC_ONLY - set(METHODS)


def test_rbac_table_has_no_stale_entries() -> None:
    assert set(rbac.TABLE) <= set(METHODS), set(rbac.TABLE) - set(METHODS)

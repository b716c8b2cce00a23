"""Every RPC in the descriptors has a handler, an RBAC entry and a validator entry (or an explicit none)."""

from __future__ import annotations

import importlib

import pytest

from runed.auth import rbac
from runed.pipeline.methods import SERVICE_MODULES, all_methods
from runed.pipeline.stages import load_routes

METHODS = [m.full_name for m in all_methods()]


def test_contract_has_at_least_the_upstream_57_rpcs() -> None:
    assert len(METHODS) >= 57


@pytest.mark.parametrize("full_name", METHODS)
def test_method_is_fully_wired(full_name: str) -> None:
    route = load_routes()[full_name]
    m = route.method
    assert full_name in rbac.TABLE, f"{full_name}: no RBAC entry"
    assert route.handler is not None, f"{full_name}: no handler in runed.api.{SERVICE_MODULES[m.service]}"
    module = importlib.import_module(f"runed.api.{SERVICE_MODULES[m.service]}")
    validators = getattr(module, "VALIDATORS", {})
    assert m.name in validators, f"{full_name}: no VALIDATORS entry (use None for 'no validation')"


def test_rbac_table_has_no_stale_entries() -> None:
    assert set(rbac.TABLE) <= set(METHODS), set(rbac.TABLE) - set(METHODS)

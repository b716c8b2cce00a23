"""The well-known namespace names and the list scope every list and watch handler reads."""

from __future__ import annotations

from runed.auth import rbac
from runed.core import names


def test_star_lists_every_namespace_and_a_name_lists_exactly_that_one() -> None:
    assert names.list_scope(names.ALL_NAMESPACES) is None
    assert names.list_scope("team-a") == "team-a"
    assert names.list_scope(names.DEFAULT_NAMESPACE) == "default"


def test_rbac_defaults_to_the_same_namespace() -> None:
    assert rbac.Access("services", "get", "namespace").default_namespace == names.DEFAULT_NAMESPACE == "default"
    assert rbac.ALL_NAMESPACES == names.ALL_NAMESPACES == "*"

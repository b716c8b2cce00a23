"""The word meant for an unknown one: one rule and one wording wherever runed suggests one."""

from __future__ import annotations

from runed.core.suggest import did_you_mean, meant


def test_the_closest_known_word_is_meant_and_none_when_nothing_is_close() -> None:
    assert meant("lsit", ["get", "list", "watch"]) == "list"
    assert meant("servcies", {"services", "secrets"}) == "services"
    assert meant("zzz", ["get", "list"]) is None
    assert meant("anything", []) is None


def test_a_suggestion_quotes_the_word_as_json_does() -> None:
    assert did_you_mean("server.grpc_address") == 'did you mean "server.grpc_address"?'

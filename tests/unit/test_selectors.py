"""Label and field selector grammar and matching; opaque page tokens."""

from __future__ import annotations

import pytest

from runed.core import errors
from runed.model import selectors
from runed.store import paging

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),  # != matches objects without the key (Kubernetes semantics)
        ("app in (web,db)", True),
        ("app in (db, cache)", False),
        ("app notin (db,cache)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!tier", False),
        ("app=web,tier in (front,back),!debug", True),
        ("app=web,env=staging", False),
        (" app = web , env in ( prod ) ", True),
    ],
)
def test_label_expressions(expr: str, expected: bool) -> None:
    sel = selectors.compile_selector(label_map={}, label_expr=expr, field_map={}, field_expr="")
    assert sel.matches(LABELS, {}) is expected


@pytest.mark.parametrize("expr", ["app in web", "app in ()", "app=web,,x", "a b", "app in (x", "=x", "app notin x)"])
def test_bad_label_expressions_are_errors(expr: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse_labels(expr)


def test_map_form_keeps_exact_match_and_ands_with_expression() -> None:
    sel = selectors.compile_selector(label_map={"app": "web"}, label_expr="env!=dev", field_map={}, field_expr="")
    assert sel.matches(LABELS, {})
    assert not sel.matches({"app": "web", "env": "dev"}, {})
    assert not sel.matches({"env": "prod"}, {})


def test_field_selectors_compare_case_insensitively_and_only_support_equality() -> None:
    sel = selectors.compile_selector(
        label_map={}, label_expr="", field_map={"name": "web"}, field_expr="status!=Failed,runtime=process"
    )
    assert sel.matches({}, {"name": "web", "status": "running", "runtime": "process"})
    assert not sel.matches({}, {"name": "web", "status": "failed", "runtime": "process"})
    with pytest.raises(selectors.SelectorError):
        selectors.parse_fields("status in (running)")


def test_check_reports_field_paths_for_every_problem() -> None:
    out = selectors.check(
        label_map={"bad key!": "x"},
        label_expr="app in",
        field_map={"colour": "red"},
        field_expr="size=3",
        allowed_fields=("name", "status"),
    )
    fields = {v.field for v in out}
    assert fields == {
        "label_selector[bad key!]",
        "label_selector_expr",
        "field_selector[colour]",
        "field_selector_expr",
    }


def test_page_tokens_are_opaque_and_bound_to_their_query() -> None:
    token = paging.encode_token(("prod", "web-7"), "q1")
    assert "web-7" not in token
    assert paging.decode_token(token, "q1") == ("prod", "web-7")
    with pytest.raises(errors.InvalidArgument) as e:
        paging.decode_token(token, "q2")
    assert e.value.violations[0].field == "page_token"
    with pytest.raises(errors.InvalidArgument):
        paging.decode_token("not-a-token", "q1")


def test_page_request_accepts_upstream_paging_fields() -> None:
    token = paging.encode_token(("default", "a"), "q")
    req = paging.page_request(0, "", 5, 0, token, "q")
    assert req.size == 5 and req.after == ("default", "a")
    assert paging.page_request(0, "", 0, 3, "", "q") == paging.PageRequest(size=0, after=None, skip=3)
    assert [v.field for v in paging.check(-1, 5000, -2)] == ["page_size", "paging.limit", "paging.offset"]

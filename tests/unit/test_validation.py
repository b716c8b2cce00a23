"""Unit tests for the field validation helpers."""

from __future__ import annotations

import pytest

from runed.core import validation as v
from runed.core.errors import FieldViolation


@pytest.mark.parametrize("name", ["a", "web", "web-1", "0abc", "a" * 63])
def test_dns1123_label_accepts(name: str) -> None:
    assert v.dns1123_label(name, "x.name") == []


@pytest.mark.parametrize("name", ["", "Web", "-web", "web-", "we_b", "we.b", "a" * 64, "wé"])
def test_dns1123_label_rejects_with_path(name: str) -> None:
    out = v.dns1123_label(name, "x.name")
    assert len(out) == 1 and out[0].field == "x.name"


def test_dns1123_label_allow_empty() -> None:
    assert v.dns1123_label("", "f", allow_empty=True) == []


def test_dns1123_subdomain() -> None:
    assert v.dns1123_subdomain("a.b-c.d", "f") == []
    assert v.dns1123_subdomain("a..b", "f")
    assert v.dns1123_subdomain(".a", "f")
    assert v.dns1123_subdomain("a" * 254, "f")


@pytest.mark.parametrize("key", ["app", "rune/auto-created", "example.com/a_b.c", "A1"])
def test_label_key_ok(key: str) -> None:
    assert v.label_key(key, "l") == []


@pytest.mark.parametrize("key", ["", "/a", "Bad_Prefix/x", "a/", "-a", "a" * 64, "a/b/c!"])
def test_label_key_bad(key: str) -> None:
    assert v.label_key(key, "l")


def test_label_values() -> None:
    assert v.label_value("", "l") == []
    assert v.label_value("v1.2_x-y", "l") == []
    assert v.label_value("-x", "l")
    assert v.label_value("x" * 64, "l")


def test_labels_reports_every_bad_entry_with_its_key_in_the_path() -> None:
    out = v.labels({"ok": "fine", "-bad": "x", "k": "-bad"}, "namespace.labels")
    assert {o.field for o in out} == {"namespace.labels[-bad]", "namespace.labels[k]"}


def test_env_var_name() -> None:
    assert v.env_var_name("DB_URL", "k") == []
    assert v.env_var_name("_x9", "k") == []
    assert v.env_var_name("9X", "k")
    assert v.env_var_name("A-B", "k")
    assert v.env_var_name("", "k")


@pytest.mark.parametrize("key", ["DB_URL", "config.yaml", "tls.crt", "a-b", ".hidden"])
def test_file_name_key_ok(key: str) -> None:
    assert v.file_name_key(key, "k") == []


@pytest.mark.parametrize("key", ["", ".", "..", "..x", "a/b", "a b", "é", "k" * 257])
def test_file_name_key_bad(key: str) -> None:
    assert v.file_name_key(key, "k")


def test_data_map_reports_all_keys_and_size_without_values() -> None:
    secret_value = "s3cr3t-VALUE" * 10
    out = v.data_map({"ok": "x", "bad key": secret_value, "../etc": "y"}, "secret.data", max_bytes=50)
    fields = [o.field for o in out]
    assert "secret.data[bad key]" in fields
    assert "secret.data[../etc]" in fields
    assert "secret.data" in fields  # the size violation
    assert all(secret_value not in o.description for o in out)


def test_data_map_key_length_limit() -> None:
    assert v.data_map({"k" * 256: ""}, "d", max_bytes=1000, max_key_len=256) == []
    assert v.data_map({"k" * 257: ""}, "d", max_bytes=1000, max_key_len=256)


def test_required_and_max_length() -> None:
    assert v.required("", "f") == [FieldViolation("f", "is required")]
    assert v.required("x", "f") == []
    assert v.max_length("abcd", "f", 3)
    assert v.max_length("abc", "f", 3) == []


def test_selector() -> None:
    assert v.selector({"app": "x"}, "label_selector") == []
    assert v.selector({"-bad": "x"}, "label_selector")
    assert v.selector({"name": "x"}, "field_selector", ("name",)) == []
    out = v.selector({"status": "x"}, "field_selector", ("name",))
    assert out and out[0].field == "field_selector[status]"

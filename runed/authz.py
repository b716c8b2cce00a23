"""Authorization stage: checks the caller's policies against the method's RBAC entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.message import Message

from runed import errors, rbac
from runed.context import CallContext

if TYPE_CHECKING:
    from runed.app import App


class Authorizer:
    def __init__(self, app: App) -> None:
        self.app = app

    async def authorize(self, ctx: CallContext, access: rbac.Access, request: Message) -> None:
        ns = rbac.namespace_of(access, request)
        ctx.namespace = ns
        if access is rbac.AUTHENTICATED:
            return
        raise errors.PermissionDenied(f"permission denied: missing {rbac.describe(access.resource, access.verb, ns)}")

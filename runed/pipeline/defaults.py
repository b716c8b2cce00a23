"""Normalise and default a request once, before authorization, so every later stage reads final values.

Today that is the namespace: an empty namespace field (the one the RBAC table names, nested paths
such as ``service.namespace`` included) becomes the default namespace. ``*`` (every namespace, in
list and watch calls) is left as it is, and so is a nested message the caller did not send: the
validator reports it missing, and filling it in here would hide that. Cluster-scoped methods have
no namespace field and are not touched.
"""

from __future__ import annotations

from google.protobuf.message import Message

from runed.auth import rbac


def apply(access: rbac.Access | None, request: Message) -> None:
    """Fill in the defaults of ``request`` in place (the message belongs to this call alone).

    Depends on nothing but the method's table entry and the message: the same request always
    comes out the same, whatever the transport.
    """
    if access is None or access.namespace_field is None:
        return
    *parents, leaf = access.namespace_field.split(".")
    node = request
    for part in parents:
        if not node.HasField(part):
            return
        node = getattr(node, part)
    if not getattr(node, leaf):
        setattr(node, leaf, access.default_namespace)

"""Well-known namespace names, defined once: the API, the RBAC table and the runner all read them here."""

from __future__ import annotations

# What an empty namespace means in a request; the pipeline fills it in before authorization
# (runed/pipeline/defaults.py), so handlers never see an empty namespace.
DEFAULT_NAMESPACE = "default"
# Where runed keeps what it owns (registry credentials); built in, like the default namespace.
SYSTEM_NAMESPACE = "system"
# In list and watch requests: every namespace.
ALL_NAMESPACES = "*"


def list_scope(namespace: str) -> str | None:
    """The store scope a list or watch reads: every namespace (None) for ``*``, else exactly that one."""
    return None if namespace == ALL_NAMESPACES else namespace

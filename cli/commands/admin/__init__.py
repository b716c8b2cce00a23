"""``rune admin``: bootstrap, tokens, users, policies, registries and the audit log.

One module per area; this one only assembles the group (``rune.cli.main`` loads ``admin`` from here).
"""

from __future__ import annotations

import click

from rune.cli.commands.admin.audit import audit
from rune.cli.commands.admin.identities import bootstrap, token, user
from rune.cli.commands.admin.policies import policy
from rune.cli.commands.admin.registries import registries


@click.group()
def admin() -> None:
    """Administration (admin RPCs are local-only unless runed allows remote admin)."""


for _command in (bootstrap, token, user, policy, registries, audit):
    admin.add_command(_command)

"""``rune cordon``, ``rune uncordon`` and ``rune drain``: what the scheduler may place on a node."""

from __future__ import annotations

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.common import pass_session


def _act(s: Session, method: str, node_id: str, done: str) -> None:
    node = s.call("NodeService", method, pb2("node").NodeActionRequest(id=node_id)).node
    click.echo(f"node/{node.id} {done}")


@click.command()
@click.argument("node_id", metavar="NODE")
@pass_session
def cordon(s: Session, node_id: str) -> None:
    """Place no new instances on NODE (the ones it runs stay)."""
    _act(s, "CordonNode", node_id, "cordoned")


@click.command()
@click.argument("node_id", metavar="NODE")
@pass_session
def uncordon(s: Session, node_id: str) -> None:
    """Let NODE take new instances again (this also ends a drain)."""
    _act(s, "UncordonNode", node_id, "uncordoned")


@click.command()
@click.argument("node_id", metavar="NODE")
@pass_session
def drain(s: Session, node_id: str) -> None:
    """Cordon NODE and move its instances to other nodes, one per service at a time as readiness allows."""
    _act(s, "DrainNode", node_id, "draining")

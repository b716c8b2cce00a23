"""``rune completion bash|zsh|fish``: print the shell completion script."""

from __future__ import annotations

import click


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print a completion script: eval "$(rune completion bash)"."""
    from click.shell_completion import get_completion_class

    from rune.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "rune", "_RUNE_COMPLETE").source())

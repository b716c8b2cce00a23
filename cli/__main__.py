"""Run the CLI as ``python -m rune.cli``."""

from rune.cli.main import main

main()

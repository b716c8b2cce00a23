"""Cast files: the YAML people write, checked key by key (with file and line) and turned into API messages.

Top-level keys: ``service``/``services``, ``secret``/``secrets``, ``configmap``/``configmaps``.
One module per step: ``lines`` reads YAML keeping line numbers, ``checks`` collects problems,
``service``/``refs``/``data`` check and translate each kind, ``parse`` drives files and documents,
``graph`` finds dependency cycles.
"""

from __future__ import annotations

from rune.cli.castfile.checks import CastErrors
from rune.cli.castfile.graph import dependency_cycles
from rune.cli.castfile.parse import Cast, collect_files, parse_files, parse_text

__all__ = ["Cast", "CastErrors", "collect_files", "dependency_cycles", "parse_files", "parse_text"]

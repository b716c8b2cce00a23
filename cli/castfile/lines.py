"""YAML that remembers where things are: mappings and sequences carry their line for error messages.

``{{...}}`` templates are swapped for plain tokens while YAML reads the text (YAML would take them
for flow mappings) and put back afterwards.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

_TEMPLATE = re.compile(r"\{\{.*?\}\}")


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its line."""

    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(n, deep=True) for n in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)  # type: ignore[arg-type]


def _protect(text: str) -> tuple[str, dict[str, str]]:
    """Swap ``{{...}}`` for plain tokens so YAML does not read them as flow mappings."""
    saved: dict[str, str] = {}

    def sub(m: re.Match[str]) -> str:
        token = f"__rune_tpl_{len(saved)}__"
        saved[token] = m.group(0)
        return token

    return _TEMPLATE.sub(sub, text), saved


def _restore(value: Any, saved: dict[str, str]) -> Any:
    if not saved:
        return value
    if isinstance(value, str):
        for token, original in saved.items():
            value = value.replace(token, original)
        return value
    if isinstance(value, LineDict):
        out = LineDict({_restore(k, saved): _restore(v, saved) for k, v in value.items()})
        out.line, out.key_lines = value.line, {_restore(k, saved): n for k, n in value.key_lines.items()}
        return out
    if isinstance(value, LineList):
        lst = LineList(_restore(v, saved) for v in value)
        lst.line = value.line
        return lst
    return value


def load_documents(text: str) -> list[Any]:
    """Every YAML document in ``text``, mappings as :class:`LineDict` and sequences as :class:`LineList`.

    Raises:
        yaml.YAMLError: the text is not valid YAML.
    """
    protected, saved = _protect(text)
    return [_restore(d, saved) for d in yaml.load_all(protected, Loader=_Loader)]  # a SafeLoader subclass

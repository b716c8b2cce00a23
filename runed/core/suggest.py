"""The word meant, for one runed does not know: one rule and one wording for every "did you mean"
(config keys and variables, policy words, JSON fields, query parameters)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def meant(word: str, known: Iterable[str]) -> str | None:
    """The known word closest to ``word`` (difflib's ratio at least 0.6), or None when none is close."""
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return close[0] if close else None


def did_you_mean(word: str) -> str:
    """How a suggestion is worded: ``did you mean "word"?``."""
    return f'did you mean "{word}"?'

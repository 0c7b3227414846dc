"""Text that PostgreSQL can store, checked at the edge.

PostgreSQL ``text``/``varchar`` cannot hold NUL (``\\x00``), and a string with a lone surrogate
cannot be encoded as UTF-8 at all; other control characters are storable but never belong in an
identifier, a reference or a code. Request schemas declare such fields as :data:`SafeStr` (or
:data:`SafeMultilineStr` for prose) with a ``max_length`` equal to the column's, so bad input is
a 422 naming the field before any database sees it. ``shared.errors`` keeps a safety net for
whatever still reaches the database (a data exception becomes a 422, never a 500).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["SafeMultilineStr", "SafeStr", "unstorable_reason"]

# C0 controls except tab/newline/carriage return, DEL, C1 controls, lone surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Single-line fields (ids, references, codes) refuse tabs and line breaks too.
_CONTROL_OR_BREAK = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def unstorable_reason(value: str, *, multiline: bool = False) -> str | None:
    """Why ``value`` may not be stored, or None. The reason never echoes the value."""
    if (_CONTROL if multiline else _CONTROL_OR_BREAK).search(value) is None:
        return None
    if "\x00" in value:
        return "must not contain NUL characters"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        return "must be valid Unicode (no lone surrogates)"
    return "must not contain control characters"


def _single_line(value: str) -> str:
    reason = unstorable_reason(value)
    if reason is not None:
        raise ValueError(reason)
    return value


def _multiline(value: str) -> str:
    reason = unstorable_reason(value, multiline=True)
    if reason is not None:
        raise ValueError(reason)
    return value


SafeStr = Annotated[str, AfterValidator(_single_line)]
"""One line of text the database can store; give it ``Field(max_length=<column length>)``."""

SafeMultilineStr = Annotated[str, AfterValidator(_multiline)]
"""Prose (tabs and line breaks allowed) the database can store."""

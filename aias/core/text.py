"""Checks for names people give things: length, no control characters, no bidi overrides."""

from __future__ import annotations

import re

from aias.core.errors import InvalidArgument

# Control characters break logs and headers; bidirectional overrides make a name display as
# something it is not (`invoice\u202etxt.exe` shows as `invoiceexe.txt`).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Path separators only: quotes and the like are encoded where a name meets a header.
_FILE_NAME_FORBIDDEN = re.compile(r"[/\\]")


def checked_text(value: str, what: str, max_chars: int = 200) -> str:
    """`value` stripped, or InvalidArgument naming `what` and the rule it breaks."""
    cleaned = value.strip()
    if not 1 <= len(cleaned) <= max_chars:
        raise InvalidArgument("INVALID_NAME", f"{what} must be 1 to {max_chars} characters")
    if _UNSAFE.search(cleaned):
        raise InvalidArgument(
            "INVALID_NAME", f"{what} must not contain control characters or bidi overrides"
        )
    return cleaned


def checked_file_name(value: str, what: str, max_chars: int = 255) -> str:
    """A name that is one path segment: no separators, no `.`/`..`, nothing hidden or invisible."""
    if value != value.strip() or value in (".", "..") or value.startswith("."):
        raise InvalidArgument(
            "INVALID_NAME", f"{what} must not start with '.' or space, nor end with a space"
        )
    name = checked_text(value, what, max_chars)
    if _FILE_NAME_FORBIDDEN.search(name):
        raise InvalidArgument("INVALID_NAME", f"{what} must not contain '/' or '\\'")
    return name

"""Text and JSON as PostgreSQL can store them.

A text or jsonb value cannot hold NUL (U+0000), and text that is not valid Unicode (a lone
surrogate, from JSON's escapes or undecodable bytes) has no UTF-8 to send. One such character
fails the statement, and with it every row of the batch it is written in; these write it as an
escape instead.
"""

from __future__ import annotations

from typing import Any


def storable(text: str) -> str:
    """`text` with NUL as the escape \\x00 and lone surrogates as escapes too."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_json(value: Any) -> Any:
    """A decoded JSON value with `storable` applied to every string, keys included; the value
    itself when nothing needs it (the common case costs one walk, no copy)."""
    if type(value) is str:
        return storable(value)
    if type(value) is list:
        items = [storable_json(item) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if type(value) is dict:
        pairs = [(storable(key), storable_json(item)) for key, item in value.items()]
        same = all(
            key is old_key and item is old_item
            for (key, item), (old_key, old_item) in zip(pairs, value.items(), strict=True)
        )
        return value if same else dict(pairs)
    return value

"""Text that goes into PostgreSQL: what a text column cannot hold is written as an escape."""

from __future__ import annotations

import pytest

from aias.core.errors import clip
from aias.core.stored import storable, storable_json


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain text, café", "plain text, café"),
        ("a\x00b", "a\\x00b"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("both\x00\udfff", "both\\x00\\udfff"),
    ],
)
def test_what_a_text_column_cannot_hold_is_escaped(text: str, stored: str) -> None:
    assert storable(text) == stored
    stored.encode("utf-8")  # always encodable


def test_a_quote_is_cut_to_its_limit_then_escaped() -> None:
    quoted = clip("\x00" * 100, 10)
    assert quoted == "\\x00" * 9 + "…"
    assert clip("short\ud800") == "short\\ud800"


def test_json_is_stored_with_every_string_escaped_and_unchanged_json_is_not_copied() -> None:
    clean = {"id": "evt_1", "data": {"object": {"items": [1, "two", None, {"k": True}]}}}
    assert storable_json(clean) is clean
    dirty = {"id": "evt_1", "data": {"object": {"name": "a\x00", "k\x00": ["\ud800", 2]}}}
    assert storable_json(dirty) == {
        "id": "evt_1",
        "data": {"object": {"name": "a\\x00", "k\\x00": ["\\ud800", 2]}},
    }

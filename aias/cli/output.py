"""What commands print: aligned tables for people, JSON for scripts (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, TypeVar

import click
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from aias.core.jsonmap import message_to_json

F = TypeVar("F", bound=Callable[..., Any])


def json_option(command: F) -> F:
    """Adds `--json`, passed to the command as `as_json`."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
    )(command)


def to_json(message: Message) -> Any:
    """The JSON the HTTP API prints for the same message (lowercase enums, `*_time` strings)."""
    return message_to_json(message)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, headers in capitals, two spaces apart."""
    lines = [[header.upper() for header in headers], *rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def when(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp to the second, in UTC."""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")

"""google.api.http path templates compiled to regexes, and the router that answers 404 or 405."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

import grpc

from aias.core.errors import clip
from aias.gateway.errors import GatewayError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


def _split_top_level(text: str, separator: str) -> list[str]:
    """Splits on `separator` outside braces, so `{name=a/*}` stays one segment."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


@dataclass(frozen=True)
class PathTemplate:
    """`/segments[:verb]` where a segment is a literal, `*`, `**` or `{field.path[=segments]}`."""

    source: str
    pattern: re.Pattern[str]
    fields: tuple[str, ...]
    verb: str

    @classmethod
    def parse(cls, source: str) -> PathTemplate:
        if not source.startswith("/"):
            raise TemplateError(f"{source!r}: a path template starts with '/'")
        path, verb = source[1:], ""
        # The verb follows the last ':' outside braces and after the last '/'.
        last = _split_top_level(path, "/")[-1]
        *head, tail = _split_top_level(last, ":")
        if head:
            verb = tail
            if not _LITERAL.fullmatch(verb):
                raise TemplateError(f"{source!r}: the verb {verb!r} is not a literal")
            path = path[: len(path) - len(last)] + ":".join(head)
        fields: list[str] = []
        regex = cls._segments(source, path, fields, in_variable=False)
        if verb:
            regex += re.escape(":" + verb)
        return cls(source, re.compile("/" + regex), tuple(fields), verb)

    @classmethod
    def _segments(cls, source: str, text: str, fields: list[str], *, in_variable: bool) -> str:
        segments = _split_top_level(text, "/")
        parts = []
        for index, segment in enumerate(segments):
            if segment == "**" and index != len(segments) - 1:
                raise TemplateError(f"{source!r}: '**' must be the last segment")
            if segment == "*":
                parts.append("[^/]+")
            elif segment == "**":
                parts.append(".*")
            elif segment.startswith("{") and segment.endswith("}"):
                if in_variable:
                    raise TemplateError(f"{source!r}: variables cannot nest")
                parts.append(cls._variable(source, segment[1:-1], fields))
            elif _LITERAL.fullmatch(segment):
                parts.append(re.escape(segment))
            else:
                raise TemplateError(f"{source!r}: bad segment {segment!r}")
        return "/".join(parts)

    @classmethod
    def _variable(cls, source: str, body: str, fields: list[str]) -> str:
        field, _, pattern = body.partition("=")
        if not all(_IDENT.fullmatch(part) for part in field.split(".")):
            raise TemplateError(f"{source!r}: {field!r} is not a field path")
        if field in fields:
            raise TemplateError(f"{source!r}: {field!r} appears twice")
        group = f"v{len(fields)}"
        fields.append(field)
        inner = cls._segments(source, pattern or "*", fields, in_variable=True)
        return f"(?P<{group}>{inner})"

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The unescaped value of each field for a percent-encoded path, or None."""
        found = self.pattern.fullmatch(raw_path)
        if found is None:
            return None
        return {field: unquote(found.group(f"v{i}")) for i, field in enumerate(self.fields)}


T = TypeVar("T")


@dataclass(frozen=True)
class Route(Generic[T]):
    """One HTTP method on one path template, and what serves it."""

    method: str
    template: PathTemplate
    target: T


# Routes are indexed by up to this many leading literal segments of their template, so a path
# is matched only against the routes that can match it.
_INDEXED_SEGMENTS = 2


class Router(Generic[T]):
    """Matches method and path against every route: the route, or 404, or 405 with `Allow`."""

    def __init__(self) -> None:
        self._routes: list[Route[T]] = []
        # By leading literal segments: (position in `_routes`, route).
        self._index: dict[tuple[str, ...], list[tuple[int, Route[T]]]] = {}

    @property
    def routes(self) -> tuple[Route[T], ...]:
        return tuple(self._routes)

    def add(self, method: str, template: str, target: T) -> Route[T]:
        parsed = PathTemplate.parse(template)
        for route in self._routes:
            if route.method == method and route.template.source == template:
                raise TemplateError(f"{method} {template} is declared twice")
        route = Route(method, parsed, target)
        key = _literal_prefix(template)
        self._index.setdefault(key, []).append((len(self._routes), route))
        self._routes.append(route)
        return route

    def _candidates(self, raw_path: str) -> list[Route[T]]:
        """The routes whose leading literal segments the path starts with, in their order."""
        segments = raw_path[1:].split("/", _INDEXED_SEGMENTS)[:_INDEXED_SEGMENTS]
        found: list[tuple[int, Route[T]]] = []
        for length in range(len(segments) + 1):
            found += self._index.get(tuple(segments[:length]), ())
        found.sort(key=lambda entry: entry[0])
        return [route for _, route in found]

    def resolve(self, method: str, raw_path: str) -> tuple[Route[T], Mapping[str, str]]:
        # A template with a verb wins over one without, so `{id}` never swallows `:rotate`
        # and `DELETE /x/1:rotate` is a 405 for the rotate route, not a delete of "1:rotate".
        matches: list[tuple[Route[T], dict[str, str]]] = []
        candidates = self._candidates(raw_path) if raw_path.startswith("/") else []
        for with_verb in (True, False):
            for route in candidates:
                if bool(route.template.verb) == with_verb:
                    params = route.template.match(raw_path)
                    if params is not None:
                        matches.append((route, params))
            if matches:
                break
        if not matches:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND", f"no route for {clip(raw_path)}"
            )
        same_method = [match for match in matches if match[0].method == method]
        if not same_method and method == "HEAD":
            # HEAD is GET without the body (RFC 9110 9.3.2): every GET route answers it.
            same_method = [match for match in matches if match[0].method == "GET"]
        if same_method:
            # The most literal template wins: `/tenants/me` over `/tenants/{id}`.
            return min(same_method, key=lambda match: len(match[0].template.fields))
        allowed = sorted({route.method for route, _ in matches})
        if "GET" in allowed and "HEAD" not in allowed:
            allowed = sorted([*allowed, "HEAD"])
        raise GatewayError(
            grpc.StatusCode.UNIMPLEMENTED,
            "METHOD_NOT_ALLOWED",
            f"{method} is not allowed on {clip(raw_path)}; use {', '.join(allowed)}",
            http_status=405,
            headers={"Allow": ", ".join(allowed)},
        )


def _literal_prefix(template: str) -> tuple[str, ...]:
    """Up to `_INDEXED_SEGMENTS` leading segments of a template that are plain literals (a
    variable, a wildcard or a verb ends the prefix): a path it matches starts with them."""
    prefix: list[str] = []
    for segment in template[1:].split("/")[:_INDEXED_SEGMENTS]:
        if not _LITERAL.fullmatch(segment):
            break
        prefix.append(segment)
    return tuple(prefix)

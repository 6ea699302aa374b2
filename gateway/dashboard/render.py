"""The dashboard's Jinja2 templates (autoescaped, shipped in the package) and their filters."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

# Pages load nothing from anywhere but the gateway, run no script and may not be framed.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages show one tenant's data: no shared cache may keep them, nor the back button after
    # signing out.
    "Cache-Control": "no-store",
}
_FRACTION = re.compile(r"\.(\d{6})\d+")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_SPANS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 timestamp as the JSON mapping writes it (nanoseconds are cut to micro)."""
    if not text:
        return None
    return datetime.fromisoformat(_FRACTION.sub(r".\1", text)).astimezone(UTC)


def utc(value: str | datetime | None) -> str:
    """`2026-11-26 10:42:03 UTC`; a dash for no time."""
    moment = parse_time(value) if isinstance(value, str | None) else value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def age(value: str | None, now: datetime) -> str:
    """How long before `now`, in the largest unit that fits: `42 s ago`, `3 min ago`, `2 d ago`."""
    moment = parse_time(value)
    if moment is None:
        return ""
    return relative(int((now - moment).total_seconds()))


def relative(seconds: int) -> str:
    if abs(seconds) < 5:
        return "just now"
    amount = abs(seconds)
    unit, length = next((unit, length) for unit, length in _SPANS if amount >= length)
    text = f"{amount // length} {unit}"
    return f"{text} ago" if seconds > 0 else f"in {text}"


def duration(milliseconds: int | None) -> str:
    """`850 ms`, `1.2 s`, `2 min 5 s`, `1 h 3 min`."""
    if milliseconds is None:
        return "—"
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, second = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {second} s"
    hours, minute = divmod(minutes, 60)
    return f"{hours} h {minute} min"


def size(count: int | None) -> str:
    """Bytes in binary units: `512 B`, `1.5 KiB`, `2.0 GiB`."""
    if count is None:
        return "—"
    amount, unit = float(count), 0
    while amount >= 1024 and unit < len(_UNITS) - 1:
        amount, unit = amount / 1024, unit + 1
    return f"{count} B" if unit == 0 else f"{amount:.1f} {_UNITS[unit]}"


def number(value: int | None) -> str:
    """`1,000`, or `unlimited` for a limit that is not set."""
    return "unlimited" if value is None else f"{value:,}"


def environment() -> Environment:
    templates = Environment(
        loader=PackageLoader("aias.gateway.dashboard", "templates"),
        autoescape=True,
        # A misspelt name fails the page (and its test) instead of rendering as nothing.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters.update(
        utc=utc, age=age, duration=duration, size=size, number=number, relative=relative
    )
    return templates


def html_response(
    templates: Environment, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    body = templates.get_template(template).render(context)
    return web.Response(
        text=body, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS
    )

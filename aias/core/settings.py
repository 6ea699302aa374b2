"""Reads process settings from the environment once, with clear errors for bad values."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class SettingsError(Exception):
    """A required setting is missing or a value is malformed."""


_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.,:/+-]+")


class Env:
    """Typed access to environment variables that collects every problem before failing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._problems: list[str] = []

    def text(self, name: str, default: str | None = None) -> str:
        value = self._environ.get(name, "").strip()
        if value:
            return value
        if default is None:
            self._problems.append(f"{name} is required but not set")
            return ""
        return default

    def secret(self, name: str, min_chars: int) -> str:
        """A required secret of at least `min_chars` characters (a random string)."""
        value = self.text(name)
        if value and len(value) < min_chars:
            self._problems.append(f"{name} must be at least {min_chars} characters long")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self._problems.append(f"{name} must be a whole number, got {raw!r}")
            return default
        if not minimum <= value <= maximum:
            self._problems.append(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self._problems.append(f"{name} must be a number, got {raw!r}")
            return default
        # NaN compares false with everything, so it would pass the minimum unnoticed.
        if not math.isfinite(value) or value < minimum:
            self._problems.append(f"{name} must be at least {minimum}, got {value}")
        return value

    def settings(self, name: str) -> dict[str, str]:
        """Space-separated `name=value` pairs (server settings): names of letters, digits, `_`
        and `.`, values without spaces or quotes."""
        found: dict[str, str] = {}
        for pair in self._environ.get(name, "").split():
            key, equals, value = pair.partition("=")
            if not (equals and _SETTING_NAME.fullmatch(key) and _SETTING_VALUE.fullmatch(value)):
                self._problems.append(
                    f"{name} must be space-separated name=value pairs (e.g. "
                    f"'shared_preload_libraries=pg_stat_statements'), got {pair[:64]!r}"
                )
                continue
            found[key] = value
        return found

    def flag(self, name: str, default: bool) -> bool:
        """true/false (also 1/0, yes/no, on/off)."""
        raw = self._environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        self._problems.append(f"{name} must be true or false, got {raw!r}")
        return default

    def parsed(self, name: str, parse: Callable[[str], T], default: T) -> T:
        """What `parse` makes of the value (its ValueError is a problem), or `default` when
        unset."""
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError as error:
            self._problems.append(f"{name}: {error}")
            return default

    def optional_path(self, name: str) -> Path | None:
        """A path, or None when unset or "-"."""
        value = self.text(name, "-")
        return None if value == "-" else Path(value)

    def address(self, name: str, default: str | None = None) -> str:
        """A backend's gRPC target: `host:port`, `dns:///host:port` (every address the name
        resolves to) or `ipv4:host:port,host:port` (these replicas; `ipv6:` likewise)."""
        value = self.text(name, default)
        if value and not _is_target(value):
            self._problems.append(
                f"{name} must look like host:port, dns:///host:port or "
                f"ipv4:host:port,host:port, got {value!r}"
            )
        return value

    def database_url(self, name: str, default: str | None = None) -> str:
        """A PostgreSQL URL, normalised to SQLAlchemy's psycopg 3 dialect."""
        value = self.text(name, default)
        if not value:
            return value
        scheme = urlsplit(value).scheme
        if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
            return "postgresql+psycopg://" + value.split("://", 1)[1]
        self._problems.append(f"{name} must be a postgresql:// URL, got scheme {scheme!r}")
        return value

    def redis_url(self, name: str) -> str:
        """A redis:// or rediss:// URL, or "" when unset."""
        value = self.text(name, "")
        if value and urlsplit(value).scheme not in ("redis", "rediss"):
            self._problems.append(f"{name} must be a redis:// or rediss:// URL")
        return value

    def problem(self, message: str) -> None:
        """Records a problem found across settings (one value too large for another, say)."""
        self._problems.append(message)

    def check(self) -> None:
        """Raises one SettingsError that lists every problem found so far."""
        if self._problems:
            raise SettingsError("invalid configuration:\n  " + "\n  ".join(self._problems))


def _is_target(value: str) -> bool:
    """Whether `value` is a gRPC target of the forms `Env.address` accepts."""
    if value.startswith("dns:///"):
        addresses = [value.removeprefix("dns:///")]
    elif value.startswith(("ipv4:", "ipv6:")):
        addresses = value[5:].split(",")
    else:
        addresses = [value]
    return all(
        host and port.isdigit()
        for host, _, port in (address.rpartition(":") for address in addresses)
    )


# What OTEL_TRACES_EXPORTER may name here; "none" (the default) leaves tracing off entirely.
TRACE_EXPORTERS = ("none", "otlp", "console")


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go, read from the standard OTEL_ variables (the SDK reads the rest itself:
    OTEL_EXPORTER_OTLP_HEADERS, OTEL_TRACES_SAMPLER, OTEL_RESOURCE_ATTRIBUTES...)."""

    exporter: str = "none"
    # OTEL_SERVICE_NAME; empty: the process's own name (its log lines' "service").
    service_name: str = ""
    # AIAS_TRACE_SQL: a span per SQL statement. Off by default: see README, "Observability".
    sql: bool = False

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"

    @classmethod
    def from_env(cls, env: Env) -> TracingSettings:
        endpoint = env.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") or env.text(
            "OTEL_EXPORTER_OTLP_ENDPOINT", ""
        )
        # An endpoint alone is enough to turn OTLP on; OTEL_TRACES_EXPORTER=none turns it off.
        exporter = env.text("OTEL_TRACES_EXPORTER", "otlp" if endpoint else "none").lower()
        if exporter not in TRACE_EXPORTERS:
            env.problem(
                f"OTEL_TRACES_EXPORTER must be one of {', '.join(TRACE_EXPORTERS)}, got {exporter!r}"
            )
            exporter = "none"
        protocol = env.text("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        if exporter == "otlp" and protocol != "grpc":
            env.problem(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc (the one bundled), got {protocol!r}"
            )
        if env.flag("OTEL_SDK_DISABLED", False):
            exporter = "none"
        return cls(
            exporter=exporter,
            service_name=env.text("OTEL_SERVICE_NAME", ""),
            sql=env.flag("AIAS_TRACE_SQL", False),
        )


@dataclass(frozen=True)
class ServerSettings:
    """What every gRPC process needs: where to listen, how to authenticate callers, where to log."""

    service: str
    host: str
    port: int
    metrics_port: int
    internal_token: str
    log_level: str
    ready_file: Path | None
    grace_seconds: float
    tracing: TracingSettings = field(default_factory=TracingSettings)

    @classmethod
    def from_env(
        cls, env: Env, service: str, default_port: int, default_metrics: int
    ) -> ServerSettings:
        prefix = f"AIAS_{service.upper().replace('-', '_')}"
        return cls(
            service=service,
            host=env.text(f"{prefix}_HOST", "0.0.0.0"),
            port=env.integer(f"{prefix}_PORT", default_port, maximum=65535),
            metrics_port=env.integer(f"{prefix}_METRICS_PORT", default_metrics, maximum=65535),
            internal_token=env.text("AIAS_INTERNAL_TOKEN"),
            log_level=env.text("AIAS_LOG_LEVEL", "INFO").upper(),
            ready_file=env.optional_path("AIAS_READY_FILE"),
            grace_seconds=env.number("AIAS_SHUTDOWN_GRACE_SECONDS", 10.0),
            tracing=TracingSettings.from_env(env),
        )

"""The gateway's settings, read once from the environment and validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aias.core.settings import Env
from gateway.backends import BACKENDS


@dataclass(frozen=True)
class GatewaySettings:
    """Where to listen, the two credentials, and where each backend is."""

    host: str
    port: int
    internal_token: str
    admin_token: str
    backends: Mapping[str, str]
    log_level: str
    ready_file: Path | None
    grace_seconds: float


def load_settings(env: Env | None = None) -> GatewaySettings:
    """Reads every variable and raises one SettingsError listing all that are missing or bad."""
    env = env or Env()
    settings = GatewaySettings(
        host=env.text("AIAS_GATEWAY_HOST", "0.0.0.0"),
        port=env.integer("AIAS_GATEWAY_PORT", 8080, maximum=65535),
        internal_token=env.text("AIAS_INTERNAL_TOKEN"),
        admin_token=env.text("AIAS_ADMIN_TOKEN"),
        backends={spec.name: env.address(spec.address_variable) for spec in BACKENDS},
        log_level=env.text("AIAS_LOG_LEVEL", "INFO").upper(),
        ready_file=env.optional_path("AIAS_READY_FILE"),
        grace_seconds=env.number("AIAS_SHUTDOWN_GRACE_SECONDS", 10.0),
    )
    env.check()
    return settings

"""The gateway's settings, read once from the environment and validated at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aias.core.clients import MAX_BATCH_CALLS
from aias.core.settings import Env, TracingSettings
from aias.gateway.backends import BACKENDS
from aias.gateway.batching import DEFAULT_BATCHES_IN_FLIGHT, DEFAULT_MAX_CALLS
from aias.gateway.dashboard.session import MIN_SECRET_CHARS
from aias.gateway.ingress import MAX_BODY_BYTES

DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_INFLIGHT = 1024
DEFAULT_PUBLIC_URL = "http://localhost:8080"
# Two bodies of the largest size: with the copies a body makes on its way to the backend
# (decoded request, serialized message) this keeps a gateway process well under 150 MiB.
DEFAULT_BODY_BUFFER_BYTES = 2 * MAX_BODY_BYTES


@dataclass(frozen=True)
class GatewaySettings:
    """Where to listen, the credentials and the dashboard's cookie secret, where each backend
    is, what clients may hold, and the URL clients reach the gateway at."""

    host: str
    port: int
    internal_token: str
    admin_token: str
    dashboard_secret: str
    backends: Mapping[str, str]
    log_level: str
    ready_file: Path | None
    grace_seconds: float
    # The first part of the grace period, during which a stopping gateway reports not ready
    # but still accepts connections.
    drain_delay_seconds: float = 0.0
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    body_buffer_bytes: int = DEFAULT_BODY_BUFFER_BYTES
    access_log: bool = True
    # Calls per batch for routes with a batch RPC (webhooks); 1 sends each call on its own.
    batch_max_calls: int = DEFAULT_MAX_CALLS
    batches_in_flight: int = DEFAULT_BATCHES_IN_FLIGHT
    public_url: str = DEFAULT_PUBLIC_URL
    tracing: TracingSettings = field(default_factory=TracingSettings)


def load_settings(env: Env | None = None) -> GatewaySettings:
    """Reads every variable and raises one SettingsError listing all that are missing or bad."""
    env = env or Env()
    settings = GatewaySettings(
        host=env.text("AIAS_GATEWAY_HOST", "0.0.0.0"),
        port=env.integer("AIAS_GATEWAY_PORT", 8080, maximum=65535),
        internal_token=env.text("AIAS_INTERNAL_TOKEN"),
        admin_token=env.text("AIAS_ADMIN_TOKEN"),
        dashboard_secret=env.secret("AIAS_DASHBOARD_SECRET", MIN_SECRET_CHARS),
        backends={spec.name: env.address(spec.address_variable) for spec in BACKENDS},
        log_level=env.text("AIAS_LOG_LEVEL", "INFO").upper(),
        ready_file=env.optional_path("AIAS_READY_FILE"),
        grace_seconds=env.number("AIAS_SHUTDOWN_GRACE_SECONDS", 10.0),
        drain_delay_seconds=env.number("AIAS_GATEWAY_DRAIN_DELAY_SECONDS", 0.0),
        header_timeout_seconds=env.number(
            "AIAS_GATEWAY_HEADER_TIMEOUT_SECONDS", DEFAULT_HEADER_TIMEOUT_SECONDS, minimum=0.1
        ),
        body_timeout_seconds=env.number(
            "AIAS_GATEWAY_BODY_TIMEOUT_SECONDS", DEFAULT_BODY_TIMEOUT_SECONDS, minimum=0.1
        ),
        max_inflight=env.integer("AIAS_GATEWAY_MAX_INFLIGHT", DEFAULT_MAX_INFLIGHT, minimum=1),
        # The budget must fit the largest body, or such a body would wait for room forever.
        body_buffer_bytes=env.integer(
            "AIAS_GATEWAY_BODY_BUFFER_BYTES", DEFAULT_BODY_BUFFER_BYTES, minimum=MAX_BODY_BYTES
        ),
        access_log=env.flag("AIAS_GATEWAY_ACCESS_LOG", True),
        batch_max_calls=env.integer(
            "AIAS_GATEWAY_BATCH_MAX_CALLS", DEFAULT_MAX_CALLS, minimum=1, maximum=MAX_BATCH_CALLS
        ),
        batches_in_flight=env.integer(
            "AIAS_GATEWAY_BATCHES_IN_FLIGHT", DEFAULT_BATCHES_IN_FLIGHT, minimum=1
        ),
        public_url=env.text("AIAS_PUBLIC_URL", DEFAULT_PUBLIC_URL),
        tracing=TracingSettings.from_env(env),
    )
    if settings.drain_delay_seconds and settings.drain_delay_seconds >= settings.grace_seconds:
        env.problem(
            "AIAS_GATEWAY_DRAIN_DELAY_SECONDS must be shorter than AIAS_SHUTDOWN_GRACE_SECONDS "
            f"({settings.grace_seconds:g}): the requests in flight finish within the rest of it"
        )
    env.check()
    return settings

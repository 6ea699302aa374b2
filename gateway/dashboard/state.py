"""What every dashboard page uses, built once per gateway: sessions, templates, stubs, actions."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files

from aiohttp import web

from aias.core.context import Caller
from aias.gateway.auth import Authenticator
from aias.gateway.backends import BACKENDS, Backends
from aias.gateway.dashboard.actions import RUN_ACTIONS, RunAction, offered
from aias.gateway.dashboard.client import Reader, Stubs
from aias.gateway.dashboard.panels import PANELS, Panel
from aias.gateway.dashboard.render import environment
from aias.gateway.dashboard.session import Sessions
from aias.gateway.proxy import RpcProxy
from aias.gateway.settings import GatewaySettings
from aias.gateway.transcoder import RpcRoute, build_routes

# Every RPC a page makes must answer within this; a panel whose backend does not says so.
RPC_TIMEOUT_SECONDS = 3.0
_DOWNLOAD_RPC = "/aias.artifacts.v1.ArtifactsService/DownloadArtifact"


class Dashboard:
    """The dashboard's parts; the pages find it on the app under `DASHBOARD`."""

    def __init__(
        self,
        settings: GatewaySettings,
        backends: Backends,
        authenticator: Authenticator,
        proxy: RpcProxy,
        *,
        panels: tuple[Panel, ...] = PANELS,
        run_actions: Iterable[RunAction] = RUN_ACTIONS,
        timeout_seconds: float = RPC_TIMEOUT_SECONDS,
    ) -> None:
        # Behind TLS the cookie must be Secure; the public URL says how clients reach us.
        self.sessions = Sessions(
            settings.dashboard_secret, secure=settings.public_url.startswith("https://")
        )
        self.templates = environment()
        self.stylesheet = (
            files("aias.gateway.dashboard") / "static" / "dashboard.css"
        ).read_bytes()
        self.authenticator = authenticator
        self.proxy = proxy
        self.panels = panels
        self.run_actions = offered(run_actions)
        # Downloads go through the public route's own streaming, as the session's caller.
        self.download: RpcRoute = next(r for r in build_routes(BACKENDS) if r.rpc == _DOWNLOAD_RPC)
        self._stubs = Stubs(backends)
        self._timeout = timeout_seconds

    def reader(self, caller: Caller) -> Reader:
        return Reader(self._stubs, caller, self._timeout)


DASHBOARD = web.AppKey("dashboard", Dashboard)

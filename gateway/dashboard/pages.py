"""The dashboard's routes: one handler per page, each fed by RPCs as the signed-in admin."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import grpc
from aiohttp import web
from aiohttp_session import Session

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.authz import at_least
from aias.core.context import Caller, request_id_var, tenant_id_var
from aias.core.jsonmap import enum_to_json, message_to_json
from aias.core.version import package_version
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.gateway.binding import PRINTABLE_ASCII
from aias.gateway.dashboard import session as sessions
from aias.gateway.dashboard.client import Reader
from aias.gateway.dashboard.panels import load_panels
from aias.gateway.dashboard.render import PAGE_HEADERS, html_response
from aias.gateway.dashboard.state import DASHBOARD, Dashboard
from aias.gateway.errors import GatewayError, json_response

Handler = Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]]

HOME = "/dashboard/diagnostics"
LOGIN = "/dashboard/login"
RUNS_PAGE_SIZE = 25
MAX_FORM_BYTES = 16 * 1024
MAX_KEY_CHARS = 512
RUN_STATUSES = tuple(
    str(enum_to_json(execution_pb.RunStatus.DESCRIPTOR, value.number))
    for value in execution_pb.RunStatus.DESCRIPTOR.values
    if value.number
)
# Where the sign-in form may send an admin back to: a dashboard page, nothing else.
_NEXT = re.compile(r"/dashboard/[A-Za-z0-9/_\-.%]*(\?[A-Za-z0-9_\-.%=&]*)?")
# Why a session ended, shown on the sign-in page; only these fixed texts are ever shown.
ENDED = {
    "signed_out": "You are signed out.",
    "revoked": "Your session ended: the API key is no longer valid. Sign in with another key.",
    "suspended": "Your session ended: the tenant is suspended. Contact the operator.",
    "role": "Your session ended: the key no longer has the admin role.",
}
_ENDED_BY = {"INVALID_API_KEY": "revoked", "TENANT_SUSPENDED": "suspended"}
NOT_ADMIN = (
    "The dashboard is for admins: this key has the member role. Sign in with an admin or owner key."
)


@dataclass(frozen=True)
class Visit:
    """A signed-in request: its session, the caller the session's key stands for, its reader."""

    session: Session
    caller: Caller
    reader: Reader


PageHandler = Callable[
    [web.Request, Mapping[str, str], Dashboard, Visit], Awaitable[web.StreamResponse]
]


class Refused(Exception):
    """Ends a page with a response of its own (a redirect, a refusal page)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**PAGE_HEADERS, "Location": location})


def _context(request: web.Request, visit: Visit | None, page: str, title: str) -> dict[str, Any]:
    return {
        "page": page,
        "title": title,
        "now": datetime.now(UTC),
        "version": package_version(),
        "request_id": request_id_var.get(),
        "signed_in": visit is not None,
        "tenant_name": sessions.tenant_name(visit.session) if visit else "",
        "role": visit.caller.role if visit else "",
        "csrf_field": sessions.CSRF_FIELD,
        "csrf_token": sessions.csrf_token(visit.session) if visit else "",
    }


def render(
    request: web.Request,
    visit: Visit | None,
    template: str,
    title: str,
    status: int = 200,
    **values: Any,
) -> web.Response:
    dashboard = request.app[DASHBOARD]
    context = {**_context(request, visit, template.removesuffix(".html"), title), **values}
    return html_response(dashboard.templates, template, context, status)


def error_page(request: web.Request, visit: Visit | None, error: GatewayError) -> web.Response:
    """A failed RPC as a page: the API's status and message, and the request id to quote."""
    response = render(
        request,
        visit,
        "error.html",
        f"Error {error.http_status}",
        error.http_status,
        message=error.message,
        reason=error.reason,
    )
    if error.close:
        response.force_close()
    return response


def csrf_refusal(request: web.Request) -> web.Response:
    return render(
        request,
        None,
        "error.html",
        "Form refused",
        403,
        message="The form was refused: its security token is missing or out of date. "
        "Reload the page and try again.",
        reason="CSRF_TOKEN_INVALID",
    )


async def read_form(request: web.Request) -> dict[str, str]:
    """A small URL-encoded form; a body beyond MAX_FORM_BYTES is refused, not read."""
    too_large = GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PAYLOAD_TOO_LARGE",
        f"a dashboard form is at most {MAX_FORM_BYTES} bytes",
        http_status=413,
        close=True,
    )
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise too_large
    body = b""
    while chunk := await request.content.read(MAX_FORM_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large
    return dict(parse_qsl(body.decode("utf-8", errors="replace")))


async def _end_session(
    request: web.Request, dashboard: Dashboard, session: Session, why: str
) -> web.Response:
    session.invalidate()
    response = redirect(f"{LOGIN}?{urlencode({'ended': why})}")
    await dashboard.sessions.save(request, response, session)
    return response


async def _caller(dashboard: Dashboard, key: str) -> Caller:
    return await dashboard.authenticator.authenticate(
        access_pb2.ACCESS_TENANT, f"Bearer {key}", request_id_var.get()
    )


async def _visit(request: web.Request, dashboard: Dashboard) -> Visit:
    """The signed-in admin, checked again through tenancy's key cache on every request."""
    session = await dashboard.sessions.load(request)
    key = sessions.api_key(session)
    if not key:
        raise Refused(redirect(f"{LOGIN}?{urlencode({'next': request.path_qs})}"))
    try:
        caller = await _caller(dashboard, key)
    except GatewayError as error:
        if error.http_status in (401, 403):
            why = _ENDED_BY.get(error.reason, "revoked")
            raise Refused(await _end_session(request, dashboard, session, why)) from None
        raise
    if not at_least(caller.role, "admin"):
        raise Refused(await _end_session(request, dashboard, session, "role"))
    tenant_id_var.set(caller.tenant_id)
    if request.method == "POST" and not sessions.csrf_matches(session, await read_form(request)):
        raise Refused(csrf_refusal(request))
    return Visit(session, caller, dashboard.reader(caller))


def signed_in(page: PageHandler) -> Handler:
    """Serves `page` to a signed-in admin only; every POST must carry the session's form token.

    Failures become pages: a backend's error is shown with its status, never as JSON.
    """

    async def serve(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        dashboard = request.app[DASHBOARD]
        visit = None
        try:
            visit = await _visit(request, dashboard)
            return await page(request, params, dashboard, visit)
        except Refused as refused:
            return refused.response
        except GatewayError as error:
            return error_page(request, visit, error)

    return serve


# -- signing in and out ----------------------------------------------------------------------


def _next(value: str) -> str:
    return value if _NEXT.fullmatch(value) and not value.startswith("//") else HOME


def _login_page(
    request: web.Request, session: Session, status: int, message: str, next_page: str
) -> web.Response:
    return render(
        request,
        None,
        "login.html",
        "Sign in",
        status,
        message=message,
        is_error=status != 200,
        csrf_token=sessions.csrf_token(session),
        next=_next(next_page),
    )


async def _login_form(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    session = await dashboard.sessions.load(request)
    if sessions.api_key(session):
        return redirect(HOME)
    fresh = sessions.give_csrf_token(session)
    message = ENDED.get(request.query.get("ended", ""), "")
    response = _login_page(request, session, 200, message, request.query.get("next", ""))
    if fresh:
        await dashboard.sessions.save(request, response, session)
    return response


async def _login(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    dashboard = request.app[DASHBOARD]
    session = await dashboard.sessions.load(request)
    form = await read_form(request)
    if not sessions.csrf_matches(session, form):
        return csrf_refusal(request)
    key, next_page = form.get("api_key", "").strip(), form.get("next", "")
    if not key or len(key) > MAX_KEY_CHARS or not PRINTABLE_ASCII.fullmatch(key) or " " in key:
        return _login_page(request, session, 400, "Paste an API key to sign in.", next_page)
    try:
        caller = await _caller(dashboard, key)
    except GatewayError as error:
        if error.http_status == 401:
            message = "This API key is not valid (unknown, mistyped or revoked)."
        elif error.reason == "TENANT_SUSPENDED":
            message = "This tenant is suspended; contact the operator."
        else:
            return error_page(request, None, error)
        return _login_page(request, session, error.http_status, message, next_page)
    if not at_least(caller.role, "admin"):
        return _login_page(request, session, 403, NOT_ADMIN, next_page)
    try:
        name = (await dashboard.reader(caller).current_tenant()).tenant.name
    except GatewayError as error:
        return error_page(request, None, error)
    sessions.sign_in(session, key, name)
    response = redirect(_next(next_page))
    await dashboard.sessions.save(request, response, session)
    return response


async def _logout(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    """Works for a session whose key was revoked meanwhile: only the form token is checked."""
    dashboard = request.app[DASHBOARD]
    session = await dashboard.sessions.load(request)
    if not sessions.csrf_matches(session, await read_form(request)):
        return csrf_refusal(request)
    return await _end_session(request, dashboard, session, "signed_out")


async def _home(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return redirect(HOME)


async def _stylesheet(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    return web.Response(
        body=request.app[DASHBOARD].stylesheet,
        content_type="text/css",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# -- pages -----------------------------------------------------------------------------------


@signed_in
async def _diagnostics(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.Response:
    panels = await load_panels(dashboard.panels, visit.reader)
    return render(request, visit, "diagnostics.html", "Diagnostics", panels=panels)


async def _diagnostics_json(request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
    """The diagnostics page's data for scripts: `Authorization: Bearer <admin key>`."""
    dashboard = request.app[DASHBOARD]
    caller = await dashboard.proxy.authenticate(
        access_pb2.ACCESS_TENANT, request, request_id_var.get()
    )
    if not at_least(caller.role, "admin"):
        raise GatewayError(
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_REQUIRED",
            f"the diagnostics are for admins; the key has the {caller.role} role",
        )
    tenant_id_var.set(caller.tenant_id)
    panels = await load_panels(dashboard.panels, dashboard.reader(caller))
    return json_response(
        {
            "tenant_id": caller.tenant_id,
            "read_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "panels": {loaded.panel.name: loaded.as_json() for loaded in panels},
        }
    )


async def runs_page(
    reader: Reader, workflow_id: str, status: str, page_token: str
) -> tuple[list[Any], str]:
    """One page of runs (as JSON), filtered by execution, and the next page's token."""
    reply = await reader.runs(workflow_id, RUNS_PAGE_SIZE, page_token, status)
    return [message_to_json(run) for run in reply.runs], reply.next_page_token


@signed_in
async def _runs(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.Response:
    workflow_id = request.query.get("workflow_id", "")
    status = request.query.get("status", "")
    if status and status not in RUN_STATUSES:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_STATUS",
            f"status must be one of {', '.join(RUN_STATUSES)}",
        )
    workflows, (runs, next_token) = await asyncio.gather(
        visit.reader.workflows(),
        runs_page(visit.reader, workflow_id, status, request.query.get("page_token", "")),
    )
    filters = {k: v for k, v in (("workflow_id", workflow_id), ("status", status)) if v}
    return render(
        request,
        visit,
        "runs.html",
        "Runs",
        runs=runs,
        workflows={w.id: w.name for w in workflows},
        statuses=RUN_STATUSES,
        workflow_id=workflow_id,
        status_filter=status,
        filtered=bool(filters),
        next_url=f"?{urlencode({**filters, 'page_token': next_token})}" if next_token else "",
        first_url=f"?{urlencode(filters)}" if "page_token" in request.query else "",
    )


@signed_in
async def _run(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.Response:
    run_id = params["run_id"]
    run, steps, artifacts = await asyncio.gather(
        visit.reader.run(run_id), visit.reader.run_logs(run_id), visit.reader.artifacts(run_id)
    )
    shown = message_to_json(run)
    return render(
        request,
        visit,
        "run.html",
        f"Run {run.id}",
        run=shown,
        steps=[message_to_json(step) for step in steps],
        longest_ms=max((step.duration_ms for step in steps), default=0),
        artifacts=[message_to_json(artifact) for artifact in artifacts],
        actions=[a for a in dashboard.run_actions.values() if shown["status"] in a.statuses],
        done=dashboard.run_actions.get(request.query.get("done", "")),
        run_path=quote(run.id, safe=""),
    )


@signed_in
async def _run_action(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.Response:
    action = dashboard.run_actions.get(params["action"])
    if action is None:
        raise GatewayError(
            grpc.StatusCode.NOT_FOUND, "ACTION_NOT_FOUND", "execution offers no such run action"
        )
    shown = await visit.reader.run_action(action.rpc, params["run_id"])
    done = urlencode({"done": action.name})
    return redirect(f"/dashboard/runs/{quote(shown, safe='')}?{done}")


@signed_in
async def _download(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.StreamResponse:
    return await dashboard.proxy.forward(
        dashboard.download, request, {"artifact_id": params["artifact_id"]}, visit.caller
    )


@signed_in
async def _integrations(
    request: web.Request, params: Mapping[str, str], dashboard: Dashboard, visit: Visit
) -> web.Response:
    integrations = [message_to_json(i) for i in await visit.reader.integrations()]
    return render(request, visit, "integrations.html", "Integrations", integrations=integrations)


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/dashboard", _home),
    ("GET", LOGIN, _login_form),
    ("POST", LOGIN, _login),
    ("POST", "/dashboard/logout", _logout),
    ("GET", HOME, _diagnostics),
    ("GET", "/dashboard/runs", _runs),
    ("GET", "/dashboard/runs/{run_id}", _run),
    ("POST", "/dashboard/runs/{run_id}/actions/{action}", _run_action),
    ("GET", "/dashboard/artifacts/{artifact_id}/download", _download),
    ("GET", "/dashboard/integrations", _integrations),
    ("GET", "/dashboard/static/dashboard.css", _stylesheet),
    ("GET", "/api/diagnostics", _diagnostics_json),
)

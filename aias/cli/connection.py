"""Where the CLI finds a service and the internal token, and how failed calls end the command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import grpc

from aias.core.clients import error_info, internal_channel
from aias.core.settings import Env, SettingsError

# Exit codes: click itself exits 2 on a usage error; a bad configuration is the same kind of
# mistake (the command cannot run as typed), so it shares the code.
REFUSED = 1
MISCONFIGURED = 2
UNREACHABLE = 3

# Long enough for a loaded service, short enough that a hung one does not hang a script.
RPC_TIMEOUT_SECONDS = 10.0
# `make run` keeps the internal token in this file of its data folder (aias.core.launcher).
TOKEN_FILE = "internal-token"

T = TypeVar("T")


class Failure(click.ClickException):
    """Ends a command with `error: <message>` on stderr; exit 1 means the service refused."""

    exit_code = REFUSED

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class Misconfigured(Failure):
    """The address or token is missing or malformed."""

    exit_code = MISCONFIGURED


class Unreachable(Failure):
    """The service did not answer."""

    exit_code = UNREACHABLE


@dataclass(frozen=True)
class Target:
    """A service's address and the internal token, each with where it came from."""

    service: str
    address: str
    address_from: str
    token: str
    token_from: str


def target(service: str, environ: Mapping[str, str] | None = None) -> Target:
    """Reads the environment the services read; unset values fall back to `make run`'s."""
    env = Env(environ)
    address_env = f"AIAS_{service.upper()}_ADDR"
    if env.text(address_env, ""):
        address, address_from = env.address(address_env), address_env
    else:
        # Imported only here: the launcher pulls in the database tooling, which costs every
        # command a third of a second, and only this fallback needs its defaults.
        from aias.core.launcher import PROCESSES

        spec = next(spec for spec in PROCESSES if spec.name == service)
        port = env.integer(spec.port_env, spec.default_port, maximum=65535)
        address = f"127.0.0.1:{port}"
        address_from = (
            f"{address_env} is unset, so `make run`'s address; "
            f"set {address_env} or run `make run` first"
        )
    token_file = (Path(env.text("AIAS_DATA_DIR", ".data")) / TOKEN_FILE).resolve()
    token, token_from = env.text("AIAS_INTERNAL_TOKEN", ""), "AIAS_INTERNAL_TOKEN"
    if not token:
        token_from = str(token_file)
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError:
            token = env.text("AIAS_INTERNAL_TOKEN")  # records the problem for check()
    try:
        env.check()
    except SettingsError as error:
        raise Misconfigured(
            f"{error}\nset {address_env} and AIAS_INTERNAL_TOKEN as the services have them, "
            f"or run `make run` first (it keeps the token in {token_file})"
        ) from None
    return Target(service, address, address_from, token, token_from)


async def call(service: str, rpc: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    """Runs `rpc` over an internal channel to `service`; a failure becomes a Failure."""
    found = target(service)
    async with internal_channel(found.address, found.token) as channel:
        try:
            return await rpc(channel)
        except grpc.aio.AioRpcError as error:
            raise _failure(error, found) from None


def _failure(error: grpc.aio.AioRpcError, found: Target) -> Failure:
    """What a failed call tells the operator, and the exit code scripts branch on."""
    code: grpc.StatusCode = error.code()
    info = error_info(error.trailing_metadata())
    if info is None:
        # Without ErrorInfo the status comes from gRPC itself: the service was not reached.
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return Unreachable(
                f"cannot reach the {found.service} service at {found.address} "
                f"({found.address_from}): {error.details() or code.name}"
            )
        return Failure(f"{error.details() or code.name} ({code.name})")
    reason, message, _ = info
    text = f"{message} ({reason})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        text += f"\nthe token came from {found.token_from}; it must be the services' token"
    return Failure(text)

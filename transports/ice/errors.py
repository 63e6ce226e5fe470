"""omero-py and Ice exceptions, translated into the core's errors (with what to do next)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import Glacier2
import Ice
import omero

from cellprofiler_omero.core.errors import (
    AuthError,
    NotFound,
    OmeroError,
    PermissionDenied,
    ServerError,
)

T = TypeVar("T")

_UNREACHABLE = (Ice.ConnectionRefusedException, Ice.DNSException, Ice.ConnectTimeoutException,
                Ice.ConnectFailedException)
_DROPPED = (Ice.ConnectionLostException, Ice.SocketException, Ice.TimeoutException,
            Ice.CommunicatorDestroyedException, Ice.ConnectionTimeoutException,
            Ice.CloseConnectionException, Ice.ForcedCloseConnectionException)


class ConnectionLost(ServerError):
    """The connection dropped mid-call; the session may still be alive (rejoin and retry)."""

    connection_lost = True


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or getattr(exc, "reason", "") or
               type(exc).__name__).strip()


def translate(exc: BaseException, what: str, where: str = "") -> OmeroError:
    """The core error for an exception raised while doing ``what``."""
    at = f" on {where}" if where else ""
    if isinstance(exc, OmeroError):
        return exc
    if isinstance(exc, Glacier2.PermissionDeniedException):
        return AuthError(f"OMERO{at} refused the login ({exc.reason or 'bad credentials'}).",
                         hint="Check the user name and password, or log in again.")
    if isinstance(exc, Glacier2.CannotCreateSessionException):
        return AuthError(f"OMERO{at} could not create a session: {exc.reason}.")
    if isinstance(exc, _UNREACHABLE):
        return ServerError(f"Cannot reach OMERO{at} ({type(exc).__name__}).",
                           hint="Check the server name and port, and that the server is up "
                                "and reachable from this machine.")
    if isinstance(exc, Ice.SecurityException):
        return ServerError(f"The secure connection to OMERO{at} failed: {exc.reason}.",
                           hint="Check the server's certificate or connect without SSL.")
    if isinstance(exc, Ice.ObjectNotExistException):
        return AuthError(f"The OMERO session{at} has expired or was closed while {what}.",
                         hint="Log in again (`cellprofiler-omero login`).")
    if isinstance(exc, _DROPPED):
        return ConnectionLost(f"The connection to OMERO{at} dropped while {what}.",
                              hint="Retry; check the network if it keeps happening.")
    if isinstance(exc, omero.SecurityViolation):
        return PermissionDenied(f"Not allowed: {what} ({_message(exc)}).",
                                hint="Ask the owner for access or use a group you belong to.")
    if isinstance(exc, omero.RemovedSessionException | omero.SessionTimeoutException):
        return AuthError(f"The OMERO session{at} has ended ({_message(exc)}).",
                         hint="Log in again (`cellprofiler-omero login`).")
    if isinstance(exc, omero.ValidationException):
        return NotFound(f"Not found while {what}: {_message(exc)}.")
    if isinstance(exc, omero.ApiUsageException):
        text = _message(exc)
        if "does not exist" in text or "No row" in text or "not found" in text.lower():
            return NotFound(f"Not found while {what}: {text}.")
        return ServerError(f"The server refused {what}: {text}.")
    if isinstance(exc, omero.ServerError):
        return ServerError(f"The server failed while {what}: {_message(exc)}.")
    if isinstance(exc, Ice.Exception):
        return ServerError(f"Ice error while {what}: {type(exc).__name__}.")
    raise exc


def translating(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: run the function, translating Ice/omero exceptions for ``what``."""

    def decorate(func: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return func(*args, **kwargs)
            except (Ice.Exception, omero.ServerError) as exc:
                raise translate(exc, what) from None

        return wrapper

    return decorate

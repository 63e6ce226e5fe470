"""omero-py and Ice exceptions, translated into the core's errors (with what to do next)."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import Glacier2
import Ice
import omero

from cellprofiler_omero.core.errors import (
    AuthError,
    NotFound,
    OmeroError,
    PermissionDenied,
    PyramidNotReady,
    ServerError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Shortest wait between two tries while a pyramid is built (a server may answer 0).
_MIN_PYRAMID_WAIT = 0.25

_UNREACHABLE = (Ice.ConnectionRefusedException, Ice.DNSException, Ice.ConnectTimeoutException,
                Ice.ConnectFailedException)
_DROPPED = (Ice.ConnectionLostException, Ice.SocketException, Ice.TimeoutException,
            Ice.CommunicatorDestroyedException, Ice.ConnectionTimeoutException,
            Ice.CloseConnectionException, Ice.ForcedCloseConnectionException)


class ConnectionLost(ServerError):
    """The connection dropped mid-call; the session may still be alive (rejoin and retry)."""

    connection_lost = True
    retryable = True


class ServerUnreachable(ServerError):
    """No connection could be made (refused, timed out, no such host).

    Worth retrying while a session is being rejoined (a server restarting); a first
    login fails at once instead, so a wrong host or port is said without waiting.
    """

    retryable = True
    unreachable = True


class SessionGone(AuthError):
    """The server no longer knows the session (or the router connection carrying it).

    On a call: the session expired, so it is renewed before trying again. While
    logging in: the connection dropped between two login calls and Ice re-sent one on
    a new connection that carries no router session; a new attempt logs in afresh.
    """

    retryable = True


class ServerBusy(ServerError):
    """The server asked to try again later (a lock, a busy database, too many users)."""

    retryable = True


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
        return ServerUnreachable(f"Cannot reach OMERO{at} ({type(exc).__name__}).",
                           hint="Check the server name and port, and that the server is up "
                                "and reachable from this machine.")
    if isinstance(exc, Ice.SecurityException):
        return ServerError(f"The secure connection to OMERO{at} failed: {exc.reason}.",
                           hint="Check the server's certificate or connect without SSL.")
    if isinstance(exc, Ice.ObjectNotExistException):
        return SessionGone(f"The OMERO session{at} has expired or was closed while {what}.",
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
    if isinstance(exc, omero.MissingPyramidException):
        # A real server raises this from setPixelsId (and reads) until its pixel-data
        # service has built the pyramid of a new big image; backOff is in milliseconds.
        pixels_id = int(exc.pixelsID) if exc.pixelsID is not None else None
        return PyramidNotReady(
            f"The server is still generating the resolution pyramid of this image "
            f"(Pixels {pixels_id}) while {what}.",
            image_id=None, pixels_id=pixels_id,
            retry_after=max(0.0, float(exc.backOff or 0) / 1000.0),
            hint="Try again later; big images become readable once it is built.")
    if isinstance(exc, omero.ConcurrencyException):
        # LockTimeout, TryAgain, DatabaseBusyException, …: "simultaneous access of some
        # resource", with a suggested back-off (ome.conditions.ConcurrencyException).
        return ServerBusy(f"The server is busy while {what}: {_message(exc)}.",
                          hint="Try again in a moment.")
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


async def wait_for_pyramid(op: Callable[[], Awaitable[T]], *, image_id: int,
                           wait_seconds: float) -> T:
    """``await op()``, waiting as the server asks while it builds the image's pyramid.

    Tries again after each ``PyramidNotReady`` (waiting its ``retry_after``) until
    ``wait_seconds`` have been spent, then raises ``PyramidNotReady`` for ``image_id``.
    """
    waited = 0.0
    while True:
        try:
            return await op()
        except PyramidNotReady as exc:
            pause = max(_MIN_PYRAMID_WAIT, exc.retry_after)
            if waited >= wait_seconds or not math.isfinite(pause):
                raise PyramidNotReady(
                    f"The server is still generating the resolution pyramid of image "
                    f"{image_id} (waited {waited:.0f} s).",
                    image_id=image_id, pixels_id=exc.pixels_id,
                    retry_after=exc.retry_after,
                    hint="Try again later: big images become readable once the server "
                         "has built their pyramid (minutes for very large images).") from None
            pause = min(pause, wait_seconds - waited)
            log.info("image %s: pyramid not ready, trying again in %.1f s", image_id, pause)
            await anyio.sleep(pause)
            waited += pause

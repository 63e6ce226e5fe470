"""omero-py and Ice exceptions, translated into the core's errors (with what to do next).

The mapping is by exception type only (never by message text); the core's types
(``core/errors.py``) carry what the core needs to decide (retry, rejoin, give up).
"""

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
    CannotReachServer,
    ConnectionLost,
    NotFound,
    OmeroError,
    PermissionDenied,
    PyramidNotReady,
    ServerBusy,
    ServerError,
    SessionGone,
)
from cellprofiler_omero.core.roles import ServerAddress

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Shortest wait between two tries while a pyramid is built (a server may answer 0).
_MIN_PYRAMID_WAIT = 0.25

_UNREACHABLE = (Ice.ConnectionRefusedException, Ice.DNSException, Ice.ConnectTimeoutException,
                Ice.ConnectFailedException)
_DROPPED = (Ice.ConnectionLostException, Ice.SocketException, Ice.TimeoutException,
            Ice.CommunicatorDestroyedException, Ice.ConnectionTimeoutException,
            Ice.CloseConnectionException, Ice.ForcedCloseConnectionException)


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or getattr(exc, "reason", "") or
               type(exc).__name__).strip()


def translate(exc: BaseException, what: str, where: str | ServerAddress = "") -> OmeroError:
    """The core error for an exception raised while doing ``what`` (on server ``where``).

    Decided by the exception's type alone. ``omero.ApiUsageException`` says only that
    the server refused the request as made (a missing object among other things); a
    caller that knows it asked for one object says ``NotFound`` itself.
    """
    at = f" on {where}" if where else ""
    if isinstance(exc, OmeroError):
        return exc
    if isinstance(exc, Glacier2.PermissionDeniedException):
        return AuthError(f"OMERO{at} refused the login ({exc.reason or 'bad credentials'}).",
                         hint="Check the user name and password, or log in again.")
    if isinstance(exc, Glacier2.CannotCreateSessionException):
        return AuthError(f"OMERO{at} could not create a session: {exc.reason}.")
    if isinstance(exc, _UNREACHABLE):
        host, port = (where.host, where.port) if isinstance(where, ServerAddress) else ("", 0)
        return CannotReachServer(f"Cannot reach OMERO{at} ({type(exc).__name__}).",
                                 host=host, port=port, reason=type(exc).__name__,
                                 hint="Check the server name and port, and that the server "
                                      "is up and reachable from this machine.")
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
        return ServerError(f"The server refused {what}: {_message(exc)}.")
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

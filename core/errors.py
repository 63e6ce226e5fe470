"""The exceptions users of cellprofiler-omero can catch: the core's failure contract.

Every message says what happened and what to do next; the facts are attributes, so
no caller ever reads the text. Transports translate their own exceptions (Ice,
omero-py, HTTP) into these types, and the core decides by type alone (as httpx's
``_exceptions.py`` does for its transports)::

    OmeroError                      base of everything raised here
    ├── ConfigError                 a setting is unknown or invalid (also ValueError)
    ├── InvalidReference            a text names no OMERO object (also ValueError)
    ├── AuthError                   not logged in, bad credentials, session not renewable
    │   └── SessionGone             the server no longer knows the session  [retryable]
    ├── NotFound                    no such object, or the user cannot see it
    ├── PermissionDenied            the object exists; the user may not do that
    ├── WrongServer                 a reference names another server
    ├── UnsupportedData             data this package cannot represent (also ValueError)
    │   └── PlaneTooLarge           a plane above the server's maximum plane size
    ├── PyramidNotReady             the server is still building a pyramid
    ├── UploadInterrupted           pixels stopped going up after the first write
    ├── NoTransport                 every transport declined or failed (``causes``)
    ├── TransportUnavailable        this transport cannot serve now  [transient]
    └── ServerError                 the server failed  [transient]
        ├── ConnectionLost          the connection dropped mid-call  [retryable]
        ├── CannotReachServer       no connection could be made  [retryable]
        ├── ServerBusy              the server asked to try again later  [retryable]
        └── RetriesExhausted        the retry budget was spent (``last_cause``)

``transient`` marks the failures after which another transport may succeed;
``retryable`` those after which a later attempt may (``core.retry``). A
``SessionGone``, ``ConnectionLost`` or ``CannotReachServer`` on a call also tells the
session manager to rejoin the session before the next attempt.
"""

from __future__ import annotations


class OmeroError(Exception):
    """Base of every error raised by cellprofiler-omero.

    ``message`` says what happened, ``hint`` what to do (``None`` when the message says
    it already); ``str(error)`` is both, for people. ``transient``: another transport
    may succeed; ``retryable``: a later attempt of the same call may succeed.
    """

    transient: bool = False
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} {hint}" if hint else message)


class ConfigError(OmeroError, ValueError):
    """A configuration key is unknown or its value is invalid."""


class InvalidReference(OmeroError, ValueError):
    """A text does not name an OMERO object this package understands."""


class AuthError(OmeroError):
    """Not logged in, the session expired and could not be renewed, or bad credentials."""


class SessionGone(AuthError):
    """The server no longer knows the session (or the connection that carried it).

    On a call: the session expired or was closed, so it is renewed before trying again.
    While logging in: the connection dropped between two login calls; a new attempt
    logs in afresh.
    """

    retryable = True


class NotFound(OmeroError):
    """The object does not exist, or the current user cannot see it."""


class PermissionDenied(OmeroError):
    """The object exists but the current user may not read or write it."""


class WrongServer(OmeroError):
    """A reference names another server than the one connected to."""


class UnsupportedData(OmeroError, ValueError):
    """Data this package cannot represent (complex pixels, too many columns, …)."""


class TransportUnavailable(OmeroError):
    """A transport cannot serve right now; the next configured one may."""

    transient = True


class ServerError(OmeroError):
    """The server failed or the connection dropped after bounded retries."""

    transient = True


class NoTransport(OmeroError):
    """Every configured transport declined or failed.

    ``attempts`` names each transport asked and what became of it, as
    ``(transport, outcome)`` pairs in the order asked; ``outcome`` is ``"declined"``,
    ``"not offered"`` or the failure's message. ``causes`` holds the transports'
    transient failures (empty when all declined), so a caller can tell a dropped
    connection (worth retrying) from a server that is absent, and ``role`` names the
    role asked for (``"connect"``, ``"read"``, …).
    """

    def __init__(self, message: str, *, hint: str | None = None,
                 causes: tuple[OmeroError, ...] = (),
                 attempts: tuple[tuple[str, str], ...] = (), role: str = "") -> None:
        super().__init__(message, hint=hint)
        self.causes = causes
        self.attempts = attempts
        self.role = role

    @property
    def only_cause(self) -> OmeroError | None:
        """The failure of the one transport asked, when exactly one was asked and failed:
        its own message says what to do better than the list of transports."""
        if len(self.attempts) == 1 and len(self.causes) == 1:
            return self.causes[0]
        return None


class ConnectionLost(ServerError):
    """The connection dropped mid-call; the session may still be alive (rejoin and retry)."""

    retryable = True


class ServerBusy(ServerError):
    """The server asked to try again later (a lock, a busy database, too many users)."""

    retryable = True


class PyramidNotReady(OmeroError):
    """The server is still generating a big image's resolution pyramid.

    ``image_id`` names the image (``None`` when only the Pixels id was known),
    ``pixels_id`` its Pixels, ``retry_after`` how long the server asked to wait (seconds).
    """

    def __init__(self, message: str, *, image_id: int | None, retry_after: float,
                 pixels_id: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_id = image_id
        self.pixels_id = pixels_id
        self.retry_after = retry_after


class PlaneTooLarge(UnsupportedData):
    """A plane is above the server's maximum plane size for its pixel type.

    ``size`` is the plane's ``(width, height)``, ``max_plane`` the server's
    ``(max_plane_width, max_plane_height)`` (``None`` when the server did not say),
    ``pixel_type`` the OMERO pixel type's name.
    """

    def __init__(self, message: str, *, size: tuple[int, int],
                 max_plane: tuple[int, int] | None, pixel_type: str,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.size = size
        self.max_plane = max_plane
        self.pixel_type = pixel_type


class RetriesExhausted(ServerError):
    """A call kept failing with retryable errors until the retry budget was spent.

    ``what`` names the call, ``attempts`` how many were made, ``elapsed_seconds`` how
    long they took in all, ``budget_seconds`` the budget (``retry.budget_seconds``) and
    ``last_cause`` the error of the last attempt (also the ``__cause__``).
    """

    def __init__(self, message: str, *, what: str, attempts: int, elapsed_seconds: float,
                 budget_seconds: float, last_cause: OmeroError,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.what = what
        self.attempts = attempts
        self.elapsed_seconds = elapsed_seconds
        self.budget_seconds = budget_seconds
        self.last_cause = last_cause


class CannotReachServer(ServerError):
    """No connection to the server: refused, no such host, or no answer in time.

    ``host`` and ``port`` are the address tried; ``reason`` names the failure (an
    exception type such as ``ConnectionRefusedException``); ``timeout_seconds`` is
    the connect timeout that ran out when the server accepted the connection but never
    answered (``None`` otherwise) and ``setting`` the setting that controls it.
    """

    retryable = True

    def __init__(self, message: str, *, host: str, port: int, reason: str,
                 timeout_seconds: float | None = None, setting: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.host = host
        self.port = port
        self.reason = reason
        self.timeout_seconds = timeout_seconds
        self.setting = setting


class CannotAnnotate(PermissionDenied):
    """The current user may not annotate an object (a read-only group, another's data).

    ``kind`` and ``object_id`` name the object, ``user`` who asked; nothing was written.
    """

    def __init__(self, message: str, *, kind: str, object_id: int, user: str,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind
        self.object_id = object_id
        self.user = user


class UploadInterrupted(OmeroError):
    """An upload's pixels stopped going up after the first was written.

    A real server lets no store bound after the first write write into that image, so
    the attempt cannot be finished. The image stays marked as incomplete: running the
    same upload again (same key) sets it aside and makes the image anew. ``image_id``
    is the incomplete image, ``name`` its name.
    """

    def __init__(self, message: str, *, image_id: int, name: str,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_id = image_id
        self.name = name

"""The failure contract: transports translate by exception type into the core's errors,
and the errors carry their facts as attributes (nothing reads their text)."""

from __future__ import annotations

import Glacier2
import Ice
import omero
import omero.clients  # loads the exception classes the server raises
import pytest

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import (
    AuthError,
    CannotReachServer,
    ConnectionLost,
    NotFound,
    NoTransport,
    OmeroError,
    PermissionDenied,
    ServerBusy,
    ServerError,
    SessionGone,
    TransportUnavailable,
)
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.registry import Registry
from cellprofiler_omero.core.retry import is_retryable
from cellprofiler_omero.core.roles import Credentials, ServerAddress
from cellprofiler_omero.transports.ice.errors import translate

SERVER = ServerAddress("omero.example.org", 4064)


@pytest.mark.parametrize(("raised", "expected"), [
    (Ice.ConnectionLostException(), ConnectionLost),
    (Ice.ObjectNotExistException(), SessionGone),
    (omero.ConcurrencyException(), ServerBusy),
    (omero.SecurityViolation(), PermissionDenied),
    (omero.ValidationException(), NotFound),
    (Glacier2.PermissionDeniedException(), AuthError),
])
def test_ice_exceptions_become_the_cores_types(raised: Exception,
                                                expected: type[OmeroError]) -> None:
    assert type(translate(raised, "reading image 1", SERVER)) is expected


def test_an_unreachable_server_is_the_cores_cannot_reach_server_with_its_address() -> None:
    error = translate(Ice.ConnectionRefusedException(), "rejoining", SERVER)
    assert isinstance(error, CannotReachServer)
    assert (error.host, error.port, error.reason) == (SERVER.host, SERVER.port,
                                                      "ConnectionRefusedException")
    assert is_retryable(error)


def test_a_refused_request_is_not_taken_for_not_found_by_its_wording() -> None:
    # ApiUsageException says only that the request was refused; the words "does not
    # exist" in its message decide nothing (a caller asking for one object says
    # NotFound itself).
    error = translate(omero.ApiUsageException(message="Pixels:5 does not exist."),
                      "opening image 5", SERVER)
    assert type(error) is ServerError
    assert not is_retryable(error)


def test_only_the_failures_a_later_attempt_may_cure_are_retryable() -> None:
    retryable = [ConnectionLost("x"), SessionGone("x"), ServerBusy("x"),
                 CannotReachServer("x", host="h", port=1, reason="r")]
    final = [AuthError("x"), NotFound("x"), PermissionDenied("x"), ServerError("x")]
    assert all(is_retryable(e) for e in retryable)
    assert not any(is_retryable(e) for e in final)


class _Declines:
    @hookimpl
    def omero_connect(self, address: ServerAddress, credentials: Credentials,
                      settings: Settings) -> None:
        return None


class _Fails:
    @hookimpl
    def omero_connect(self, address: ServerAddress, credentials: Credentials,
                      settings: Settings) -> None:
        raise TransportUnavailable("the service is down")


def test_no_transport_names_each_transport_asked_and_what_became_of_it() -> None:
    settings = Settings().replace({"transports.connect": ["first", "second"]})
    registry = Registry(settings, load_entry_points=False)
    registry.register(_Declines(), "first")
    registry.register(_Fails(), "second")
    with pytest.raises(NoTransport) as caught:
        registry.connect(SERVER, Credentials(session_key="k"))
    error = caught.value
    assert error.role == "connect"
    assert error.attempts == (("first", "declined"), ("second", "the service is down"))
    assert [type(c) for c in error.causes] == [TransportUnavailable]
    assert error.only_cause is None  # two transports were asked: the list is the news


def test_one_transport_asked_and_failed_is_the_only_cause() -> None:
    settings = Settings().replace({"transports.connect": ["second"]})
    registry = Registry(settings, load_entry_points=False)
    registry.register(_Fails(), "second")
    with pytest.raises(NoTransport) as caught:
        registry.connect(SERVER, Credentials(session_key="k"))
    assert isinstance(caught.value.only_cause, TransportUnavailable)


def test_the_browser_shows_the_one_failed_transports_own_message() -> None:
    from cellprofiler_omero.cp_integration.gui.source import error_text

    refused = CannotReachServer("Cannot reach OMERO on h:1 (ConnectionRefusedException).",
                                host="h", port=1, reason="ConnectionRefusedException",
                                hint="Check the server name and port.")
    alone = NoTransport("No transport could connect: ice: …", attempts=(("ice", "…"),),
                        causes=(refused,), hint="Check 'transports.connect'.")
    assert error_text(alone) == f"{refused.message} {refused.hint}"
    several = NoTransport("No transport could connect: a: declined; ice: …",
                          attempts=(("a", "declined"), ("ice", "…")), causes=(refused,))
    assert error_text(several) == several.message

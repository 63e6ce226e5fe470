"""What the subcommands share: settings, the session, progress bars, argument types."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from cellprofiler_omero.core.config import ENV_PREFIX
from cellprofiler_omero.core.errors import (
    AuthError,
    CannotReachServer,
    NoTransport,
    OmeroError,
    RetriesExhausted,
    ServerError,
)
from cellprofiler_omero.core.tokens import TokenFileError

if TYPE_CHECKING:
    from tqdm import tqdm

    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.roles import Connection, ServerAddress, SessionInfo
    from cellprofiler_omero.core.session import SessionManager

T = TypeVar("T")


class UsageError(OmeroError):
    """The command line cannot be carried out as given (exit status 2, like argparse)."""


# -- argument types ------------------------------------------------------------------------


#: Largest count or offset a command takes: OMERO's paging (``Filter``) uses Java ints.
MAX_COUNT = 2**31 - 1
#: Longest time to idle: about 19 years, far beyond any server's limit, and well within
#: the Java long of milliseconds it becomes.
MAX_MINUTES = 10**7


def _whole_number(text: str, what: str = "a whole number") -> int:
    """``text`` as an int of at most 10 ASCII digits (``int()`` would take any length)."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    if len(digits.lstrip("0")) > 10:
        raise argparse.ArgumentTypeError(f"{digits[:20]}… is too large")
    return int(digits)


def _at_most(value: int, text: str, limit: int) -> int:
    if value > limit:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {limit})")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (and at most ``MAX_COUNT``)."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return _at_most(value, text, MAX_COUNT)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0 (and at most ``MAX_COUNT``)."""
    return _at_most(_whole_number(text), text, MAX_COUNT)


def port_number(text: str) -> int:
    """An argparse type: a TCP port."""
    try:
        value = _whole_number(text, "a port number")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


_DURATION_PART = re.compile(r"([0-9]{1,9})\s*(d|h|m|min|s)?\s*")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1, None: 60}


def duration_minutes(text: str) -> int:
    """An argparse type: ``90m``, ``2h``, ``600s``, ``1h30m``, ``1d`` or plain minutes.

    Returns whole minutes (seconds round up: a token idles out in minutes), at most
    ``MAX_MINUTES``.
    """
    rest = text.strip().lower()
    seconds = 0
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None:
            break
        seconds += int(match.group(1)) * _SECONDS[match.group(2)]
        position = match.end()
    if not rest or position != len(rest):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a duration; use e.g. 90m, 2h, 600s, 1h30m or plain minutes")
    minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than a minute")
    if minutes > MAX_MINUTES:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is too long (at most "
                                         f"{MAX_MINUTES} minutes)")
    return minutes


def format_minutes(minutes: int) -> str:
    """``100`` → ``1 h 40 min``: how people read idle times."""
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" if not rest else f"{hours} h {rest} min"


# -- settings and the session ----------------------------------------------------------------

SERVER_HELP = ("OMERO server host name (default: server.host from the settings or "
               "$CELLPROFILER_OMERO_SERVER_HOST, else the saved token's server)")
PORT_HELP = ("the server's Ice port (default: server.port from the settings or "
             "$CELLPROFILER_OMERO_SERVER_PORT, else 4064)")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--port``, for every command that talks to a server."""
    group = parser.add_argument_group("server")
    group.add_argument("--server", metavar="HOST", help=SERVER_HELP)
    group.add_argument("--port", metavar="N", type=port_number, help=PORT_HELP)


def load(args: argparse.Namespace) -> Settings:
    """The settings (file < environment < ``--server``/``--port``)."""
    from cellprofiler_omero.core.config import load_settings

    overrides: dict[str, Any] = {}
    if getattr(args, "server", None):
        overrides["server.host"] = args.server
    if getattr(args, "port", None) is not None:
        overrides["server.port"] = args.port
    return load_settings(overrides)


def run(func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """``await func(*args, **kwargs)`` on the process's event loop."""
    from cellprofiler_omero.core import runtime

    return runtime.run(functools.partial(func, *args, **kwargs))


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[SessionManager]:
    """A session manager for one command; its connection is closed (or detached) after."""
    from cellprofiler_omero.core.session import SessionManager

    manager = SessionManager(load(args))
    try:
        yield manager
    finally:
        run(manager.close)


def server_label(manager: SessionManager, host: str | None = None,
                 port: int | None = None) -> str:
    """``HOST:PORT`` of the server a connection attempt is aimed at, for messages."""
    from cellprofiler_omero.core import tokens

    settings = manager.settings
    if host:
        return f"{host}:{port or settings.server.port}"
    if settings.server.host:
        return f"{settings.server.host}:{port or settings.server.port}"
    with contextlib.suppress(OmeroError):
        token = tokens.read_token(settings.auth.token_dir)
        if token is not None:
            return f"{token.host}:{token.port}"
    return "the OMERO server"


def unreachable(where: str, exc: OmeroError) -> OmeroError:
    """One clear error for a server that cannot be reached (instead of the transport list).

    Built from the facts the failure carries (``CannotReachServer``: address, reason,
    timeout), found in ``exc`` itself, among a ``NoTransport``'s causes or behind a
    spent retry budget. Otherwise the one transport's own error, or ``exc`` itself.
    """
    found = _cannot_reach(exc)
    if found is None:
        causes = exc.causes if isinstance(exc, NoTransport) else ()
        return causes[0] if len(causes) == 1 else exc
    address = f"{found.host}:{found.port}" if found.host else where
    if found.timeout_seconds is not None:
        setting = found.setting or "server.connect_timeout_seconds"
        env = ENV_PREFIX + setting.replace(".", "_").upper()
        return ServerError(
            f"no answer from {address} within {found.timeout_seconds:g} s.",
            hint=f"Check the server name and port (--server/--port; OMERO's Ice port is "
                 f"usually 4064), that the server is up and that no firewall drops the "
                 f"connection; on a slow network raise {setting} in the settings "
                 f"(or ${env}).")
    return ServerError(
        f"cannot reach {address} ({found.reason}).",
        hint="Check the server name and port (--server/--port, or server.host and "
             "server.port in the settings) and that the server is up and reachable from "
             "this machine.")


def _cannot_reach(exc: BaseException | None, depth: int = 0) -> CannotReachServer | None:
    """The ``CannotReachServer`` behind ``exc`` (itself, a cause, or a last attempt's)."""
    if exc is None or depth > 5:
        return None
    if isinstance(exc, CannotReachServer):
        return exc
    if isinstance(exc, NoTransport):
        for cause in exc.causes:
            found = _cannot_reach(cause, depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(exc, RetriesExhausted):  # a spent budget keeps its last attempt's error
        return _cannot_reach(exc.last_cause, depth + 1)
    return None


def connect(manager: SessionManager, args: argparse.Namespace, *, host: str | None = None,
            port: int | None = None, **credentials: Any) -> SessionInfo:
    """Connect to ``--server`` (else ``host``, else the settings/token server).

    Without credentials the saved token or a parent's hand-off is used. An unreachable
    server becomes one ``cannot reach HOST:PORT`` error, and a saved token whose session
    has ended says so (the transport only knows that a join was refused).
    """
    host = getattr(args, "server", None) or host
    port = getattr(args, "port", None) or port
    try:
        return run(manager.connect, host, port, **credentials)
    except (NoTransport, ServerError) as exc:
        raise unreachable(server_label(manager, host, port), exc) from None
    except TokenFileError:
        raise  # names the file and what to do already
    except AuthError:
        server = None if credentials else _token_in_use(manager, host, port)
        if server is None:
            raise
        raise AuthError(
            f"The saved token's session on {server.host}:{server.port} has ended (unused for "
            "too long, or logged out elsewhere).",
            hint="Log in again: `cellprofiler-omero login --save-token`.") from None


def _token_in_use(manager: SessionManager, host: str | None, port: int | None
                  ) -> ServerAddress | None:
    """The server of the saved token the manager chose for this target, if it chose one
    (the same rule as the login: ``core.credentials.choose_credentials``)."""
    try:
        address, credentials = manager.credentials_for(host, port)
    except AuthError:  # no server, no usable token, or a malformed token file
        return None
    return address if credentials.source == "token" else None


def call(manager: SessionManager, func: Callable[[Connection], Awaitable[T]],
         ref: Any = None) -> T:
    """``await func(connection)`` with the manager's renew-once-on-lapse rule."""
    return run(manager.call, func, ref)


# -- output ----------------------------------------------------------------------------------


def progress(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A progress bar on stderr, only on a terminal and only once work takes a while."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                disable=not _isatty(sys.stderr), delay=0.5, dynamic_ncols=True)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams (tests, pipes)
        return False


class OutputError(OmeroError):
    """An output file cannot be written; ``path`` is the file, ``reason`` why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"Cannot write {path} ({reason}).",
                         hint="Choose a file in a folder you can write to (-o FILE).")
        self.path = path
        self.reason = reason


def write_output(path: Path, text: str) -> None:
    """Write a command's whole output to ``path`` at once (only after it all succeeded,
    so a failed command leaves no file behind)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(path, exc.strerror or type(exc).__name__) from None


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


def note(text: str) -> None:
    """A message for the person at the terminal (stderr, so stdout stays data)."""
    print(text, file=sys.stderr)

"""The process's one OMERO connection: log in, keep alive, renew, hand off, shut down.

Transport-neutral: the connection itself comes from the ``omero_connect`` hook.
Beside it: ``core.credentials`` (which credentials a login uses, a pure rule),
``core.handoff`` (the file a parent lends its session through) and ``core.tokens``
(the saved omero-user-token). Rules it keeps:

* One active connection per process; connecting to another server closes the
  previous one first.
* Credentials, in order: explicit arguments; a session handed over by a parent
  process (``CELLPROFILER_OMERO_SESSION_FILE``, a 0600 file); the saved
  omero-user-token when ``auth.use_token`` is on **and** its host is the server
  wanted. A key is never sent to another host than the one it came from.
* Calls given to ``call`` are retried (``core.retry``: exponential backoff with jitter)
  until ``retry.budget_seconds`` is spent; a call that fails because the session
  expired or the connection dropped is retried after rejoining (session key) or
  logging in again (password kept in memory only). Only calls safe to repeat go
  through ``call``: reads, look-ups, and writes that look for their earlier result
  first (uploads by client key, table rows by key). A session that cannot be
  renewed ends in ``AuthError`` saying how to reconnect; a budget spent ends in
  ``RetriesExhausted``. Nothing prompts.
* Logins retry the same way (a dropped connection mid-login, e.g. an analysis
  worker joining the handed-over session); a first login to a host that cannot be
  reached at all fails at once (a wrong host or port is said without waiting).
* ``close()`` is idempotent; token and hand-off sessions are detached (they stay
  valid for their owners), password sessions are closed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio

from cellprofiler_omero.core import runtime, tokens
from cellprofiler_omero.core.config import Settings, load_settings
from cellprofiler_omero.core.credentials import RECONNECT_HINT, choose_credentials, token_serves
from cellprofiler_omero.core.errors import (
    AuthError,
    CannotReachServer,
    ConnectionLost,
    NoTransport,
    OmeroError,
    SessionGone,
    WrongServer,
)
from cellprofiler_omero.core.handoff import HANDOFF_ENV, Handoff, HandoffFile, read_handoff
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.registry import Registry
from cellprofiler_omero.core.retry import is_retryable, retrying
from cellprofiler_omero.core.roles import Connection, Credentials, ServerAddress, SessionInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["HANDOFF_ENV", "SessionManager", "get_manager", "set_manager"]

_RECONNECT_HINT = RECONNECT_HINT


class SessionManager:
    """Holds the process's connection and renews it when it lapses."""

    def __init__(self, settings: Settings | None = None, registry: Registry | None = None
                 ) -> None:
        self.settings = settings or load_settings()
        self.registry = registry or Registry(self.settings)
        self._conn: Connection | None = None
        self._address: ServerAddress | None = None
        self._credentials: Credentials | None = None
        self._lock: anyio.Lock | None = None
        self._keepalive_scope: anyio.CancelScope | None = None
        self._handoff = HandoffFile()
        #: The key of a session whose connection failed and is not yet renewed (a
        #: password session is rejoined by it before logging in again).
        self._lapsed_key: str | None = None
        #: The parent's hand-off file a session came from (this process may export its
        #: own hand-off for its children later, so renewals must not read the variable).
        self._parent_handoff: str | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def info(self) -> SessionInfo | None:
        return self._conn.info if self._conn is not None else None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def _get_lock(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def address_for(self, host: str | None = None, port: int | None = None) -> ServerAddress:
        """The server wanted: explicit, else the connected one, else the configured one."""
        if host:
            return ServerAddress(host, port or self.settings.server.port)
        if self._address is not None:
            return self._address
        if self.settings.server.host:
            return ServerAddress(self.settings.server.host, port or self.settings.server.port)
        raise AuthError(
            "No OMERO server is set.",
            hint="Pass --server, set server.host in the settings, or " + _RECONNECT_HINT,
        )

    # -- connecting --------------------------------------------------------------------

    async def connect(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        session_key: str | None = None,
        use_token: bool | None = None,
    ) -> SessionInfo:
        """Connect (or reuse the connection) to a server and return who is logged in.

        With no credentials, a parent's hand-off or the saved token is used; with
        none of those, ``AuthError`` says how to log in.
        """
        async with self._get_lock():
            return await self._connect_locked(host, port, user, password, session_key,
                                              use_token)

    async def _connect_locked(self, host: str | None, port: int | None, user: str | None,
                              password: str | None, session_key: str | None,
                              use_token: bool | None) -> SessionInfo:
        explicit = session_key is not None or (user is not None and password is not None)
        address = self._resolve_address(host, port)
        if self._conn is not None:
            if self._address == address and not explicit:
                return self._conn.info
            reason = "switch" if self._address != address else "relogin"
            await self._close_locked(reason=reason)
        credentials = self._choose_credentials(address, user, password, session_key, use_token)
        self._parent_handoff = (os.environ.get(HANDOFF_ENV)
                                if credentials.source == "environment" else None)
        return await self._open(address, credentials, reason="connect")

    def _resolve_address(self, host: str | None, port: int | None) -> ServerAddress:
        handoff = read_handoff()
        if host:
            if port is None and self.settings.server.host and \
                    ServerAddress(self.settings.server.host).same_host(host):
                return ServerAddress(host, self.settings.server.port)
            if port is None:
                # A web link names the host but not the Ice port: take the port of a
                # session or token for that very host before the configured default.
                if handoff is not None and handoff.address.same_host(host):
                    return handoff.address
                token = self._token() if self._use_token(None) else None
                if token is not None and ServerAddress(token.host, token.port).same_host(host):
                    return ServerAddress(host, token.port)
            return ServerAddress(host, port or self.settings.server.port)
        if handoff is not None:
            return handoff.address
        if self.settings.server.host:
            return ServerAddress(self.settings.server.host, port or self.settings.server.port)
        if self._address is not None:
            return self._address
        token = self._token() if self._use_token(None) else None
        if token is not None:
            return ServerAddress(token.host, token.port)
        raise AuthError("No OMERO server is set and no token is saved.", hint=_RECONNECT_HINT)

    def _use_token(self, use_token: bool | None) -> bool:
        return self.settings.auth.use_token if use_token is None else use_token

    def _token(self) -> tokens.Token | None:
        return tokens.read_token(self.settings.auth.token_dir)

    def credentials_for(self, host: str | None = None, port: int | None = None, *,
                        user: str | None = None, password: str | None = None,
                        session_key: str | None = None, use_token: bool | None = None
                        ) -> tuple[ServerAddress, Credentials]:
        """The server and credentials ``connect`` would use for these arguments, without
        connecting (``AuthError`` when not logged in). The CLI asks this to say which
        saved session failed."""
        address = self._resolve_address(host, port)
        return address, self._choose_credentials(address, user, password, session_key,
                                                 use_token)

    def _choose_credentials(self, address: ServerAddress, user: str | None,
                            password: str | None, session_key: str | None,
                            use_token: bool | None) -> Credentials:
        read: list[tokens.Token | None] = []

        def token() -> tokens.Token | None:
            read.append(self._token())
            return read[-1]

        try:
            return choose_credentials(address, user=user, password=password,
                                      session_key=session_key, handoff=read_handoff,
                                      token=token, use_token=self._use_token(use_token))
        except AuthError:
            saved = read[-1] if read else None
            if saved is not None and not token_serves(saved, address):
                log.info("the saved token is for %s:%s, not %s; not using it",
                         saved.host, saved.port, address)
            raise

    async def _open(self, address: ServerAddress, credentials: Credentials, reason: str,
                    *, retry: bool = True) -> SessionInfo:
        """Log in or join; retried within the budget unless ``retry`` is off (renewals,
        which their caller's retries repeat)."""
        def attempt() -> Awaitable[Connection]:
            return anyio.to_thread.run_sync(self.registry.connect, address, credentials)

        if retry:
            conn = await retrying(
                attempt, what=f"logging in to {address}", settings=self.settings.retry,
                # A host that cannot be reached at all on the first login is a wrong
                # host or port far more often than a restart: say so at once.
                retry_if=lambda exc: is_retryable(exc) and not _unreachable(exc))
        else:
            conn = await attempt()
        old = self.info
        self._conn, self._address, self._credentials = conn, address, credentials
        self._lapsed_key = None
        if self._handoff.path is not None:  # children rejoin from it: keep it current
            self._handoff.write(Handoff(address, conn.session_key))
        info = conn.info
        log.info("connected to %s as %s (group %s) via %s", address, info.user, info.group,
                 info.source)
        # Observers learn from ``info.source`` whether a saved token logged in (the GUI
        # says so, see ``hookspecs.omero_session_changed``).
        self.registry.hook.omero_session_changed(old=old, new=info, reason=reason)
        self._start_keepalive()
        return info

    # -- using -------------------------------------------------------------------------

    async def connection(self, ref: ObjectRef | None = None) -> Connection:
        """The live connection, connecting from hand-off or token when there is none.

        A ``ref`` naming another host than the connected server raises ``WrongServer``.
        """
        async with self._get_lock():
            if self._conn is None and self._credentials is not None:
                await self._renew_locked()  # lapsed: a failed renewal left no connection
            if self._conn is None:
                host = ref.host if ref is not None else None
                port = ref.port if ref is not None else None
                await self._connect_locked(host, port, None, None, None, None)
            assert self._conn is not None
            if ref is not None:
                self.check_ref(ref)
            return self._conn

    def check_ref(self, ref: ObjectRef) -> None:
        """Raise ``WrongServer`` unless ``ref`` names the connected server (or no server)."""
        if self._address is None:
            return
        if not self._address.same_host(ref.host) or (
            ref.port is not None and ref.port != self._address.port
        ):
            raise WrongServer(
                f"{ref} is on {ref.host}, but this session is connected to {self._address.host}.",
                hint="Connect to that server first (`cellprofiler-omero login --server "
                f"{ref.host}`); the current session's key is never sent to another host.",
            )

    async def call(self, func: Callable[[Connection], Awaitable[T]],
                   ref: ObjectRef | None = None, *, what: str | None = None) -> T:
        """``await func(connection)``, retried within ``retry.budget_seconds``.

        ``func`` must be safe to run again after any failure, including one whose reply
        was lost after the server acted (look for the earlier result before writing).
        A lapsed session is renewed between attempts; errors that no retry can help
        (permission denied, bad input, not found, a session that cannot be renewed)
        are raised at once. ``what`` names the call in the error after the budget.
        """
        failed: Connection | None = None
        lapsed: BaseException | None = None

        async def attempt() -> T:
            nonlocal failed, lapsed
            if failed is not None:
                conn = await self.renew(failed)
                if ref is not None:
                    self.check_ref(ref)
            else:
                conn = await self.connection(ref)
            failed = lapsed = None
            try:
                return await func(conn)
            except OmeroError as exc:
                if _is_session_failure(exc):
                    log.info("session lapsed or connection dropped (%s); renewing",
                             type(exc).__name__)
                    failed, lapsed = conn, exc
                raise

        where = self._address or (ref.host if ref is not None else "OMERO")
        return await retrying(
            attempt, what=what or f"talking to {where}", settings=self.settings.retry,
            # A lapse of the session is worth an attempt after renewing it; a renewal
            # that is refused (AuthError from renew) is not.
            retry_if=lambda exc: exc is lapsed or is_retryable(exc))

    async def renew(self, failed: Connection | None = None) -> Connection:
        """Rejoin or log in again with the credentials held (one attempt each).

        ``AuthError`` when the server refuses; a retryable error (the connection
        dropped again) when the caller's retries may still succeed.
        """
        async with self._get_lock():
            if self._conn is not None and failed is not None and self._conn is not failed:
                return self._conn  # another task renewed already
            return await self._renew_locked()

    async def _renew_locked(self) -> Connection:
        address, credentials = self._address, self._credentials
        if address is None or credentials is None:
            raise AuthError("Not connected to OMERO.", hint=_RECONNECT_HINT)
        if self._conn is not None:
            old_conn, self._conn = self._conn, None
            self._lapsed_key = old_conn.session_key
            await _quietly_close(old_conn, detach=True)
        if credentials.source == "environment" and self._parent_handoff:
            # A parent that renewed its session rewrites the hand-off: join its new key.
            handed = read_handoff({HANDOFF_ENV: self._parent_handoff})
            if handed is not None and handed.address == address:
                credentials = Credentials(session_key=handed.key, source="environment")
        attempts = [credentials]
        if credentials.source == "password" and self._lapsed_key is not None:
            # A password session is first rejoined by its key (cheap, same session).
            attempts.insert(0, Credentials(session_key=self._lapsed_key, source="session"))
        failures: list[OmeroError] = []
        for attempt in attempts:
            try:
                await self._open(address, attempt, reason="renew", retry=False)
                self._credentials = credentials
                assert self._conn is not None
                return self._conn
            except OmeroError as exc:
                failures.append(exc)
        retryable = [exc for exc in failures if is_retryable(exc)]
        if retryable:
            raise retryable[-1]  # the server may answer the next attempt
        last = failures[-1]
        if credentials.source == "environment" and credentials.session_key == self._lapsed_key:
            # The parent still hands over the key that ended: it renews its session when
            # it next uses it and rewrites the hand-off, so a later attempt may join.
            raise SessionGone(
                f"The session handed over by the parent process on {address} has ended "
                f"({last.message}); waiting for the parent to renew it.",
                hint="Keep the parent process (CellProfiler, `cellprofiler-omero run`) "
                     "running and logged in.") from last
        raise AuthError(
            f"The session on {address} has ended and could not be renewed "
            f"({last.message}).",
            hint=_RECONNECT_HINT,
        ) from last

    def _start_keepalive(self) -> None:
        if self._keepalive_scope is not None:
            self._keepalive_scope.cancel()
        scope = anyio.CancelScope()
        self._keepalive_scope = scope
        interval = self.settings.auth.keepalive_seconds

        async def keepalive() -> None:
            with scope:
                while True:
                    await anyio.sleep(interval)
                    conn = self._conn
                    if conn is None:
                        return
                    try:
                        await conn.ping()
                    except OmeroError as exc:
                        log.info("keep-alive failed (%s); will renew on next use",
                                 type(exc).__name__)

        if runtime.in_loop_thread():
            runtime.spawn(keepalive, name="cellprofiler-omero keep-alive")

    # -- tokens and hand-off -----------------------------------------------------------

    async def save_token(self, time_to_idle_minutes: int | None = None) -> Path:
        """Save an omero-user-token for the connected server and return its file."""
        conn = await self.connection()
        minutes = time_to_idle_minutes or self.settings.auth.token_time_to_idle_minutes
        key = await conn.create_user_session(minutes * 60_000)
        info = conn.info
        return tokens.write_token(tokens.Token(key, info.server.host, info.server.port),
                                  self.settings.auth.token_dir)

    def export_for_workers(self) -> dict[str, str]:
        """Environment for child processes to join this session (``core.handoff``: a
        0600 file, removed when the session closes or the process ends)."""
        if self._conn is None or self._address is None:
            return {}
        if self._handoff.path is None:
            runtime.on_shutdown(self._remove_handoff)
        return self._handoff.write(Handoff(self._address, self._conn.session_key))

    async def _remove_handoff(self) -> None:
        self._handoff.remove()

    # -- closing -----------------------------------------------------------------------

    async def close(self, reason: str = "close") -> None:
        """End the connection (idempotent): detach token/hand-off sessions, close others."""
        async with self._get_lock():
            await self._close_locked(reason)

    async def _close_locked(self, reason: str) -> None:
        if self._keepalive_scope is not None:
            self._keepalive_scope.cancel()
            self._keepalive_scope = None
        await self._remove_handoff()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        old = conn.info
        detach = old.source in ("token", "environment")
        await _quietly_close(conn, detach=detach)
        log.info("%s session on %s (%s)", "detached" if detach else "closed", old.server, reason)
        self._credentials = None
        self._address = None
        self.registry.hook.omero_session_changed(old=old, new=None, reason=reason)


def _is_session_failure(exc: OmeroError) -> bool:
    """A failure after which the session must be rejoined before trying again."""
    return isinstance(exc, AuthError | ConnectionLost) or _unreachable(exc)


def _unreachable(exc: BaseException) -> bool:
    """No connection could be made at all (refused, timed out, unknown host)."""
    if isinstance(exc, NoTransport):
        return any(_unreachable(cause) for cause in exc.causes)
    return isinstance(exc, CannotReachServer)


async def _quietly_close(conn: Connection, *, detach: bool) -> None:
    try:
        await conn.close(detach=detach)
    except Exception as exc:  # closing a dead connection must not mask the real error
        log.debug("closing connection failed: %s", type(exc).__name__)


_manager: SessionManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> SessionManager:
    """The process-wide session manager (created with the current settings on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = SessionManager()
            runtime.on_shutdown(_manager.close)
        return _manager


def set_manager(manager: SessionManager | None) -> None:
    """Replace the process-wide manager (tests, the CLI with explicit settings)."""
    global _manager
    with _manager_lock:
        _manager = manager

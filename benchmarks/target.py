"""The server every path of one run talks to: an emulator started here, or the user's own.

A ``Target`` hands out the three kinds of client the paths compare — this package's
``SessionManager`` (per read transport), omero-py's ``BlitzGateway`` and a bare
``omero.client`` — all logged in the same way and all closed again by their context
managers. With a password each client has a session of its own, ended afterwards;
with a saved token every client joins the token's session and only leaves it (the
user's token keeps working after the run).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.config import Settings, load_settings
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, SeedOptions

log = logging.getLogger(__name__)

#: The emulator's demo user (it owns the seeded data).
EMULATOR_USER = ("demo", "demo")


@dataclass(frozen=True)
class NetworkProfile:
    """A network between the client and the emulator: latency per call, bandwidth cap.

    The emulator applies it (``Emulator.set_network``): every Ice call and HTTP request
    waits ``latency_ms``, one round trip, and its request and reply bytes cross a link of
    ``bandwidth_mbit`` per direction, shared by concurrent calls (0: unlimited).
    """

    name: str
    latency_ms: float = 0.0
    bandwidth_mbit: float = 0.0

    def describe(self) -> dict[str, Any]:
        """What the results file records about the profile."""
        return {"name": self.name, "latency_ms": self.latency_ms,
                "bandwidth_mbit": self.bandwidth_mbit}

    @property
    def label(self) -> str:
        """``campus (2 ms per call, 1 Gbit/s)``; loopback says it adds nothing."""
        if not self.latency_ms and not self.bandwidth_mbit:
            return f"{self.name} (nothing added)"
        parts = [f"{self.latency_ms:g} ms per call"]
        if self.bandwidth_mbit:
            bw = self.bandwidth_mbit
            parts.append(f"{bw / 1000:g} Gbit/s" if bw >= 1000 else f"{bw:g} Mbit/s")
        else:
            parts.append("bandwidth unlimited")
        return f"{self.name} ({', '.join(parts)})"


#: The networks users' servers are behind: a machine room, a campus, another site.
PROFILES: dict[str, NetworkProfile] = {p.name: p for p in (
    NetworkProfile("loopback"),
    NetworkProfile("lan", 0.5, 10_000),
    NetworkProfile("campus", 2.0, 1_000),
    NetworkProfile("wan", 20.0, 200),
)}


@dataclass
class Target:
    """Where the benchmark runs and how to log in there (secrets are never shown)."""

    kind: str  # "emulator" or "server"
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token_key: str | None = field(default=None, repr=False)
    pixelbuffer_url: str | None = None
    base_settings: Settings = field(default_factory=Settings)
    emulator: Emulator | None = None

    @property
    def is_emulator(self) -> bool:
        return self.kind == "emulator"

    def describe(self) -> dict[str, Any]:
        """What the results file records about the server (no credentials)."""
        return {"kind": self.kind, "host": self.host, "port": self.port,
                "user": self.user or "(token)", "pixelbuffer": self.pixelbuffer_url,
                "secure": self.base_settings.server.secure}

    # -- this package -----------------------------------------------------------------------

    def settings(self, read: str = "ice") -> Settings:
        """Settings that read through ``read`` only (no silent fallback to another)."""
        values: dict[str, Any] = {"server.host": self.host, "server.port": self.port,
                                  "transports.read": [read],
                                  "auth.use_token": self.password is None,
                                  "auth.keepalive_seconds": 3600}
        if self.pixelbuffer_url:
            values["pixelbuffer.servers"] = {**self.base_settings.pixelbuffer.servers,
                                             self.host: self.pixelbuffer_url}
        return self.base_settings.replace(values)

    @contextlib.contextmanager
    def session(self, read: str = "ice") -> Iterator[SessionManager]:
        """A logged-in ``SessionManager`` reading through ``read``; closed afterwards."""
        manager = SessionManager(self.settings(read))
        if self.password is not None:
            runtime.run(lambda: manager.connect(self.host, self.port, user=self.user,
                                                password=self.password))
        else:
            # The saved token: the manager detaches from it on close instead of ending it.
            runtime.run(lambda: manager.connect(self.host, self.port))
        try:
            yield manager
        finally:
            runtime.run(manager.close)

    # -- omero-py -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def blitz(self) -> Iterator[Any]:
        """A connected ``BlitzGateway``, as omero-py's documentation writes it."""
        from omero.gateway import BlitzGateway

        if self.password is not None:
            conn = BlitzGateway(self.user, self.password, host=self.host, port=self.port,
                                secure=self.base_settings.server.secure)
            ok = conn.connect()
        else:
            conn = BlitzGateway(host=self.host, port=self.port,
                                secure=self.base_settings.server.secure)
            ok = conn.connect(sUuid=self.token_key)
        if not ok:
            raise AuthError(f"BlitzGateway could not log in to {self.host}:{self.port}.")
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                # hard=True ends a password session; a token's session is only left.
                conn.close(hard=self.password is not None)

    @contextlib.contextmanager
    def bare_client(self) -> Iterator[Any]:
        """A bare ``omero.client`` with a session, moved to the plain-TCP router.

        It gets the Ice client settings this package's Ice transport uses (message size
        limit, client thread pool: omero-py's default of one thread reads concurrent
        replies one at a time) and, unless asked to stay secure, moves off SSL as
        BlitzGateway and the Ice transport do: the comparison measures code, not
        configuration or encryption.
        """
        import omero.clients

        ice = self.base_settings.ice
        client = omero.client(host=self.host, port=self.port, pmap=[
            f"--Ice.MessageSizeMax={ice.message_limit_kib}",
            f"--Ice.ThreadPool.Client.SizeMax={max(4, ice.concurrency)}"])
        if self.password is not None:
            client.createSession(self.user, self.password)
        else:
            client.joinSession(self.token_key)
        if not self.base_settings.server.secure:
            router = client.getSession().getConfigService().getConfigValue(
                "omero.router.insecure")
            if router:
                plain = client.createClient(secure=False)
                client.getSession().closeOnDestroy()
                client.closeSession()
                client = plain
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                if self.password is not None:
                    client.killSession()
                else:
                    client.closeSession()
            with contextlib.suppress(Exception):
                client.__del__()

    def set_network(self, profile: NetworkProfile) -> None:
        """Put the emulator behind ``profile``'s network (the user's server: refused)."""
        if self.emulator is None:
            if profile.latency_ms or profile.bandwidth_mbit:
                raise ValueError("a network profile applies to the emulator only")
            return
        self.emulator.set_network(latency_ms=profile.latency_ms,
                                  bandwidth_mbit=profile.bandwidth_mbit)

    def call_counts(self) -> dict[str, int] | None:
        """The emulator's round-trip counts so far (``None`` for the user's server)."""
        return None if self.emulator is None else self.emulator.call_counts()

    def close(self) -> None:
        """Stop the emulator, if this target started one."""
        if self.emulator is not None:
            self.emulator.close()
            self.emulator = None


def start_emulator(seed: SeedOptions) -> Target:
    """An emulator on free ports with ``seed``'s demo data, as a target (logged in as demo)."""
    emulator = Emulator(seed_options=seed).start()
    user, password = EMULATOR_USER
    return Target("emulator", emulator.host, emulator.port, user=user, password=password,
                  pixelbuffer_url=emulator.http_url, emulator=emulator)


def own_server(host: str | None, port: int | None, user: str | None, password: str | None,
               pixelbuffer_url: str | None) -> Target:
    """The user's server: ``--host``/``--user`` (password asked for when not given), else
    the saved token.

    The user's settings file applies (``server.secure``, ``pixelbuffer.servers``…);
    ``$OMERO_PASSWORD`` is read as ``cellprofiler-omero login`` does.
    """
    from cellprofiler_omero.core import tokens

    settings = load_settings()
    if user is not None:
        password = password if password is not None else os.environ.get("OMERO_PASSWORD")
        if password is None:
            password = getpass.getpass(f"Password for {user}: ")
        host = host or settings.server.host
        if not host:
            raise AuthError("--user needs --host (or server.host in the settings).")
        port = port or settings.server.port
        url = pixelbuffer_url or settings.pixelbuffer.servers.get(host)
        return Target("server", host, port, user=user, password=password,
                      pixelbuffer_url=url, base_settings=settings)
    token = tokens.read_token(settings.auth.token_dir)
    if token is None:
        raise AuthError("No --user given and no saved token.",
                        hint="Pass --host/--user (and --password or $OMERO_PASSWORD), or "
                             "save a token with `cellprofiler-omero login --save-token`.")
    if host and (host.lower() != token.host.lower() or (port and port != token.port)):
        raise AuthError(f"The saved token is for {token.host}:{token.port}, not {host}.",
                        hint="Pass --user (and a password) for this server.")
    url = pixelbuffer_url or settings.pixelbuffer.servers.get(token.host)
    return Target("server", token.host, token.port, token_key=token.key,
                  pixelbuffer_url=url, base_settings=settings)

"""Logging in survives a strict site (issue 12, §2.7).

The server here sets ``omero.sessions.max_user_time_to_live`` (so a token's session that
would live forever is refused, as ome/omero-server ``SessionManagerImpl`` refuses it) and
publishes an ``omero.router.insecure`` that nobody can reach (a firewalled port). Logins
by password, by token and through the command line must still work, and so must reads.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core import tokens
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, SeedOptions
from tests.conftest import run
from tests.test_cli import in_process

MAX_TTL_MS = 7_200_000
MAX_TTI_MS = 1_800_000
CONNECTION_LOG = "cellprofiler_omero.transports.ice.connection"


def closed_port() -> int:
    """A port on which nothing listens: bound once for its number, then let go."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    config = {
        "omero.sessions.max_user_time_to_live": str(MAX_TTL_MS),
        "omero.sessions.max_user_time_to_idle": str(MAX_TTI_MS),
        "omero.router.insecure": f"OMERO.Glacier2/router:tcp -p {closed_port()} -h 127.0.0.1",
    }
    tiny = SeedOptions(seed=3, fields=1, field_size=64, large_size=0, plate_rows=1,
                       plate_columns=1, plate_fields=1, plate_field_size=32)
    with Emulator(tmp_path_factory.mktemp("strict"), seed_options=tiny,
                  server_config=config) as emu:
        yield emu


@pytest.fixture
def settings(strict: Emulator, tmp_path: Path) -> Settings:
    return Settings().replace({"server.host": strict.host, "server.port": strict.port,
                               "auth.token_dir": str(tmp_path / "tokens"),
                               "auth.keepalive_seconds": 3600})


@pytest.fixture
def logged_in(settings: Settings) -> Iterator[SessionManager]:
    mgr = SessionManager(settings)
    run(lambda: mgr.connect(user="demo", password="demo"))
    yield mgr
    run(mgr.close)


def router_of(manager: SessionManager) -> str:
    conn: Any = run(manager.connection)
    props = conn.client.getCommunicator().getProperties()
    return str(props.getProperty("Ice.Default.Router"))


def read_first_field(manager: SessionManager, strict: Emulator) -> tuple[int, ...]:
    reader = ImageReader(manager, parse_image(f"Image:{strict.seeded['fields'][0]}"))
    try:
        return tuple(run(lambda: reader.read(c=[0])).shape)
    finally:
        run(reader.aclose)


def unreachable_router_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == CONNECTION_LOG and r.levelno == logging.WARNING
            and "cannot be reached" in r.getMessage()]


# -- an unreachable plain-TCP router -------------------------------------------------------

def test_password_login_stays_on_the_secure_router_when_the_insecure_one_is_unreachable(
        settings: Settings, strict: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=CONNECTION_LOG)
    mgr = SessionManager(settings)
    info = run(lambda: mgr.connect(user="demo", password="demo"))
    try:
        assert (info.user, info.source) == ("demo", "password")
        # The login went on over SSL, and one line said why.
        assert "ssl" in router_of(mgr)
        assert len(unreachable_router_warnings(caplog)) == 1
        assert read_first_field(mgr, strict) == (1, 1, 64, 64)
    finally:
        run(mgr.close)


def test_the_insecure_router_is_used_where_it_is_reachable(manager: Any) -> None:
    # The shared emulator's insecure router answers: the session moves to plain TCP.
    assert "tcp" in router_of(manager) and "ssl" not in router_of(manager)


# -- a site with a maximum session lifetime ------------------------------------------------

def test_token_asks_for_the_sites_maximum_lifetime_and_idle_time(
        logged_in: SessionManager) -> None:
    run(lambda: logged_in.save_token(24 * 60))  # a day's idle time: more than the site allows
    token = tokens.read_token(logged_in.settings.auth.token_dir)
    assert token is not None
    conn: Any = run(logged_in.connection)
    made = conn.sf.getSessionService().getSession(token.key)
    assert made.getTimeToLive().getValue() == MAX_TTL_MS
    assert made.getTimeToIdle().getValue() == MAX_TTI_MS


def test_token_login_and_reads_work_on_a_strict_site(
        logged_in: SessionManager, settings: Settings, strict: Emulator,
        caplog: pytest.LogCaptureFixture) -> None:
    run(logged_in.save_token)
    caplog.set_level(logging.WARNING, logger=CONNECTION_LOG)
    fresh = SessionManager(settings)
    info = run(fresh.connect)
    try:
        assert (info.user, info.source) == ("demo", "token")
        assert "ssl" in router_of(fresh)
        assert len(unreachable_router_warnings(caplog)) == 1
        assert read_first_field(fresh, strict) == (1, 1, 64, 64)
    finally:
        run(fresh.close)


def test_command_line_login_saves_a_token_that_whoami_uses(
        strict: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cli = in_process(monkeypatch, capsys, strict, tmp_path / "tokens")
    monkeypatch.setenv("OMERO_PASSWORD", "demo")
    code, out, err = cli("login", "--user", "demo", "--save-token")
    assert code == 0, err
    assert "Saved an omero-user-token" in out
    code, out, err = cli("whoami")
    assert code == 0, err
    assert "demo" in out

"""The connection manager with the Ice transport, against the emulator."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core import tokens
from cellprofiler_omero.core.errors import AuthError, WrongServer
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import HANDOFF_ENV, SessionManager
from cellprofiler_omero.emulator import Emulator
from tests.conftest import run


def live_sessions(emulator: Emulator, user: str) -> list[dict[str, Any]]:
    return [s for s in emulator.sessions() if s["user"] == user and s["live"]]


def test_login_by_password_reports_who_and_how(settings_for: Any) -> None:
    mgr = SessionManager(settings_for())
    info = run(lambda: mgr.connect(user="demo", password="demo"))
    assert (info.user, info.group, info.source) == ("demo", "demo", "password")
    run(mgr.close)


def test_wrong_password_raises_auth_error(settings_for: Any) -> None:
    mgr = SessionManager(settings_for())
    with pytest.raises(AuthError, match="refused the login"):
        run(lambda: mgr.connect(user="demo", password="nope"))


def test_unreachable_server_says_so(settings_for: Any) -> None:
    from cellprofiler_omero.core.errors import NoTransport

    mgr = SessionManager(settings_for(server__port=1))
    with pytest.raises(NoTransport, match="Cannot reach OMERO"):
        run(lambda: mgr.connect(user="demo", password="demo"))


def test_login_by_session_key_joins_the_same_session(manager: Any, settings_for: Any) -> None:
    key = run(manager.connection).session_key
    other = SessionManager(settings_for())
    info = run(lambda: other.connect(session_key=key))
    assert info.source == "session" and info.user == "demo"
    assert run(other.connection).session_key == key
    run(other.close)


def test_saved_token_is_private_and_usable_by_omero_user_token(
        manager: Any, settings_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = run(manager.save_token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = tokens.read_token(manager.settings.auth.token_dir)
    assert token is not None and token.host == manager.info.server.host
    monkeypatch.setenv("OMERO_USER_TOKEN_DIR", manager.settings.auth.token_dir)
    import omero_user_token

    client = omero_user_token.login(path.read_text())
    try:
        assert client.getSession().getAdminService().getEventContext().userName == "demo"
    finally:
        client.closeSession()


def test_token_logs_in_without_password_and_survives_close(manager: Any, settings_for: Any,
                                                           emulator: Emulator) -> None:
    run(manager.save_token)
    fresh = SessionManager(settings_for())
    info = run(fresh.connect)
    assert info.source == "token"
    run(fresh.close)
    # Detached, not closed: the token still logs in.
    again = SessionManager(settings_for())
    assert run(again.connect).source == "token"
    run(again.close)


def test_token_for_another_host_is_not_used(settings_for: Any, emulator: Emulator) -> None:
    settings = settings_for()
    tokens.write_token(tokens.Token("secret-key", "elsewhere.example.org", emulator.port),
                       settings.auth.token_dir)
    mgr = SessionManager(settings)
    with pytest.raises(AuthError, match="Not logged in"):
        run(mgr.connect)


def test_tokens_can_be_turned_off(manager: Any, settings_for: Any) -> None:
    run(manager.save_token)
    mgr = SessionManager(settings_for(auth__use_token=False))
    with pytest.raises(AuthError, match="Not logged in"):
        run(mgr.connect)


def test_switching_servers_closes_the_previous_client(settings_for: Any, emulator: Emulator,
                                                      tmp_path: Path) -> None:
    with Emulator(tmp_path / "second", seed="users") as second:
        mgr = SessionManager(settings_for())
        run(lambda: mgr.connect(user="demo", password="demo"))
        first_conn = run(mgr.connection)
        threads_before = threading.active_count()
        run(lambda: mgr.connect(second.host, second.port, user="demo", password="demo"))
        assert mgr.info.server.port == second.port
        assert first_conn._closed
        run(mgr.close)
        assert threading.active_count() <= threads_before + 1


def test_reference_to_another_host_is_refused(manager: Any) -> None:
    ref = parse_image("https://elsewhere.example.org/webclient/?show=image-1")
    with pytest.raises(WrongServer, match="never sent to another host"):
        run(lambda: manager.connection(ref))


def test_expired_password_session_is_renewed_by_itself(manager: Any, emulator: Emulator,
                                                       seeded: dict[str, Any]) -> None:
    old_key = run(manager.connection).session_key
    emulator.expire_sessions(keys=[old_key])
    reader = ImageReader(manager, parse_image(f"Image:{seeded['fields'][0]}"))
    data = run(lambda: reader.read(c=[0]))
    assert data.shape == (1, 1, 512, 512)
    assert run(manager.connection).session_key != old_key
    run(reader.aclose)


def test_expired_token_session_ends_in_auth_error_with_advice(manager: Any, settings_for: Any,
                                                              emulator: Emulator,
                                                              seeded: dict[str, Any]) -> None:
    run(manager.save_token)
    mgr = SessionManager(settings_for())
    run(mgr.connect)
    emulator.expire_sessions(keys=[run(mgr.connection).session_key])
    reader = ImageReader(mgr, parse_image(f"Image:{seeded['fields'][0]}"))
    with pytest.raises(AuthError, match="cellprofiler-omero login"):
        run(reader.metadata)
    run(mgr.close)


def test_dropped_connection_is_rejoined_with_the_same_session(manager: Any, faults: Emulator,
                                                              seeded: dict[str, Any]) -> None:
    key = run(manager.connection).session_key
    reader = ImageReader(manager, parse_image(f"Image:{seeded['fields'][0]}"))
    run(reader.metadata)
    faults.set_faults(drop_after=1, ops=["getAdminService", "getQueryService",
                                         "createRawPixelsStore"])
    data = run(lambda: reader.read(c=[0]))
    assert data.shape == (1, 1, 512, 512)
    assert run(manager.connection).session_key == key
    run(reader.aclose)


def test_close_is_idempotent_and_closes_password_sessions(settings_for: Any,
                                                          emulator: Emulator) -> None:
    mgr = SessionManager(settings_for())
    run(lambda: mgr.connect(user="other", password="other"))
    key = run(mgr.connection).session_key
    run(mgr.close)
    run(mgr.close)
    assert not mgr.connected
    with pytest.raises(AuthError):
        run(lambda: SessionManager(settings_for(auth__use_token=False)).connect(
            session_key=key))


def test_workers_join_through_a_private_handoff_file(manager: Any, seeded: dict[str, Any],
                                                     emulator: Emulator) -> None:
    env_update = manager.export_for_workers()
    path = Path(env_update[HANDOFF_ENV])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert manager.info.server.host in json.loads(path.read_text())["host"]
    code = (
        "from cellprofiler_omero.core import runtime\n"
        "from cellprofiler_omero.core.config import Settings\n"
        "from cellprofiler_omero.core.session import SessionManager\n"
        "from cellprofiler_omero.core.reading import ImageReader\n"
        "from cellprofiler_omero.core.refs import parse_image\n"
        "m = SessionManager(Settings().replace({'auth.use_token': False}))\n"
        f"r = ImageReader(m, parse_image('Image:{seeded['fields'][0]}'))\n"
        "print(runtime.run(lambda: r.read(c=[1])).shape, m.info.source)\n"
    )
    env = {**os.environ, **env_update}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert "(1, 1, 512, 512) environment" in out.stdout
    run(manager.close)
    assert not path.exists()


def test_session_key_never_appears_in_logs(settings_for: Any,
                                           caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.DEBUG):
        mgr = SessionManager(settings_for())
        run(lambda: mgr.connect(user="demo", password="demo"))
        key = run(mgr.connection).session_key
        run(mgr.save_token)
        run(mgr.close)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert key not in text and "demo\x00" not in text
    assert "password" not in text.replace("via password", "")


def test_web_link_without_port_joins_the_handed_over_session(manager: Any, emulator: Emulator,
                                                             seeded: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from cellprofiler_omero.core.config import Settings

    env = manager.export_for_workers()
    monkeypatch.setenv(HANDOFF_ENV, env[HANDOFF_ENV])
    worker = SessionManager(Settings().replace({"auth.use_token": False}))
    ref = parse_image(f"https://{emulator.host}/webclient/?show=image-{seeded['fields'][0]}")
    conn = run(lambda: worker.connection(ref))
    assert conn.info.server.port == emulator.port and conn.info.source == "environment"
    run(worker.close)

"""Which credentials a login uses (``core.credentials``) and the worker hand-off file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cellprofiler_omero.core.credentials import choose_credentials, token_serves
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.handoff import HANDOFF_ENV, Handoff, HandoffFile, read_handoff
from cellprofiler_omero.core.roles import ServerAddress
from cellprofiler_omero.core.tokens import Token

HERE = ServerAddress("omero.example.org", 4064)
ELSEWHERE = ServerAddress("other.example.org", 4064)


def _never() -> None:
    raise AssertionError("read although an earlier credential applies")


def test_an_explicit_session_key_comes_first() -> None:
    chosen = choose_credentials(HERE, session_key="k", user="u", password="p",
                                handoff=_never, token=_never)
    assert (chosen.source, chosen.session_key) == ("session", "k")


def test_a_user_and_password_come_before_hand_off_and_token() -> None:
    chosen = choose_credentials(HERE, user="alice", password="secret",
                                handoff=_never, token=_never)
    assert (chosen.source, chosen.user, chosen.password) == ("password", "alice", "secret")


def test_a_parents_hand_off_for_the_same_server_comes_before_the_token() -> None:
    chosen = choose_credentials(HERE, handoff=lambda: Handoff(HERE, "parent-key"),
                                token=_never)
    assert (chosen.source, chosen.session_key) == ("environment", "parent-key")


def test_a_hand_off_for_another_server_is_not_used() -> None:
    chosen = choose_credentials(HERE, handoff=lambda: Handoff(ELSEWHERE, "parent-key"),
                                token=lambda: Token("token-key", HERE.host, HERE.port))
    assert (chosen.source, chosen.session_key) == ("token", "token-key")


def test_the_saved_token_is_used_only_for_its_own_host_and_port() -> None:
    other_port = Token("k", HERE.host, 14064)
    other_host = Token("k", ELSEWHERE.host, HERE.port)
    for token in (other_port, other_host):
        with pytest.raises(AuthError) as caught:
            choose_credentials(HERE, token=lambda t=token: t)
        assert str(HERE) in caught.value.message
    assert token_serves(Token("k", "OMERO.example.org", 4064), HERE)


def test_the_token_is_not_read_when_tokens_are_off() -> None:
    with pytest.raises(AuthError):
        choose_credentials(HERE, token=_never, use_token=False)


def test_no_credentials_say_how_to_log_in() -> None:
    with pytest.raises(AuthError) as caught:
        choose_credentials(HERE)
    assert caught.value.hint is not None and "cellprofiler-omero login" in caught.value.hint


def test_the_hand_off_file_is_private_and_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HANDOFF_ENV, raising=False)
    handoff = HandoffFile()
    env = handoff.write(Handoff(HERE, "secret-key"))
    try:
        path = Path(env[HANDOFF_ENV])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.environ[HANDOFF_ENV] == str(path)
        assert read_handoff() == Handoff(HERE, "secret-key")
        assert "secret-key" not in repr(read_handoff())
    finally:
        handoff.remove()
    assert not path.exists() and HANDOFF_ENV not in os.environ
    handoff.remove()  # idempotent


def test_a_hand_off_file_others_can_read_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "session"
    path.write_text('{"host": "omero.example.org", "port": 4064, "key": "k"}')
    path.chmod(0o600)
    assert read_handoff({HANDOFF_ENV: str(path)}) == Handoff(HERE, "k")
    path.chmod(0o644)
    assert read_handoff({HANDOFF_ENV: str(path)}) is None


def test_a_broken_hand_off_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "session"
    path.write_text('{"host": "omero.example.org"}')
    path.chmod(0o600)
    assert read_handoff({HANDOFF_ENV: str(path)}) is None
    assert read_handoff({HANDOFF_ENV: str(tmp_path / "missing")}) is None
    assert read_handoff({}) is None

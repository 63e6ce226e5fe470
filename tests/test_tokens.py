"""The omero-user-token file: its format, privacy and host matching."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cellprofiler_omero.core import tokens
from cellprofiler_omero.core.errors import AuthError


def test_token_round_trip_in_omero_user_token_format(tmp_path: Path) -> None:
    path = tokens.write_token(tokens.Token("abc-123", "omero.org", 4064), str(tmp_path))
    assert path.read_text() == "abc-123@omero.org:4064"
    token = tokens.read_token(str(tmp_path))
    assert token == tokens.Token("abc-123", "omero.org", 4064)


def test_token_file_and_folder_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    path = tokens.write_token(tokens.Token("k", "h", 1), str(folder))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_token_repr_hides_the_key() -> None:
    assert "secret-key" not in repr(tokens.Token("secret-key", "h", 1))


def test_missing_token_reads_as_none(tmp_path: Path) -> None:
    assert tokens.read_token(str(tmp_path)) is None


def test_malformed_token_raises_without_echoing_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("secret-without-host")
    with pytest.raises(AuthError) as info:
        tokens.read_token(str(tmp_path))
    assert "secret-without-host" not in str(info.value)


def test_token_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("OMERO_USER_TOKEN_DIR", str(tmp_path))
    assert tokens.token_dir() == tmp_path
    monkeypatch.delenv("OMERO_USER_TOKEN_DIR")
    assert tokens.token_dir() == Path.home() / ".omero_user_token"


def test_remove_token_only_removes_our_key(tmp_path: Path) -> None:
    tokens.write_token(tokens.Token("theirs", "h", 1), str(tmp_path))
    assert not tokens.remove_token(str(tmp_path), only_key="ours")
    assert tokens.remove_token(str(tmp_path), only_key="theirs")
    assert tokens.read_token(str(tmp_path)) is None

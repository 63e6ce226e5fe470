"""The omero-user-token file: its format, privacy and host matching."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- files that are not a usable token -------------------------------------------------------

SECRET = "secret-key-0123"


def token_error(folder: Path) -> tokens.TokenFileError:
    with pytest.raises(tokens.TokenFileError) as info:
        tokens.read_token(str(folder))
    error = info.value
    assert isinstance(error, AuthError)  # what session code already catches
    assert error.path == folder / "token" and str(error.path) in str(error)
    assert SECRET not in str(error)
    return error


@pytest.mark.parametrize("content", [
    f"{SECRET}@h:4064".encode("utf-16"),
    b"\xff\xfe\xfd" + SECRET.encode(),
    SECRET.encode("ascii") + b"@h\xe9:4064",
])
def test_a_token_file_that_is_not_utf8_names_the_file_and_the_fix(tmp_path: Path,
                                                                  content: bytes) -> None:
    (tmp_path / "token").write_bytes(content)
    error = token_error(tmp_path)
    assert error.reason == "is not a token (not UTF-8 text)"
    assert "cellprofiler-omero logout" in str(error) and "login --save-token" in str(error)


GARBAGE = [
    f"{SECRET}@h:" + "9" * 4000, f"{SECRET}@h:99999", f"{SECRET}@h:0", f"{SECRET}@h:²",
    f"{SECRET}@h:٣", f"{SECRET} @h:4064", f"{SECRET}@h h:4064", f"{SECRET}@:4064", "@h:4064",
    f"{SECRET}@h:4064\nmore", f"{SECRET}\x00@h:4064",
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_in_the_token_file_is_malformed_never_a_crash(tmp_path: Path, text: str
                                                              ) -> None:
    (tmp_path / "token").write_text(text, encoding="utf-8")
    assert token_error(tmp_path).reason.startswith("is malformed")


def test_a_port_of_any_length_is_malformed_never_a_value_error() -> None:
    # int() alone raises ValueError past 4300 digits.
    with pytest.raises(tokens.TokenFileError, match="is malformed"):
        tokens.parse_token(f"{SECRET}@h:" + "9" * 5000)


def test_a_token_file_too_large_for_a_token_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"x" * 10_000_000)
    assert token_error(tmp_path).reason.startswith("is too large to be a token")


def test_a_folder_in_place_of_the_token_file_says_to_remove_it(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    error = token_error(tmp_path)
    assert error.reason == "is a folder, not a file"
    assert f"Remove the folder {tmp_path / 'token'}" in str(error)


@pytest.mark.timeout(30)
def test_a_fifo_in_place_of_the_token_file_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "token")  # opening it for reading would wait for a writer
    assert token_error(tmp_path).reason == "is not a regular file"


def test_a_token_folder_that_is_a_file_says_the_file_cannot_be_read(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-folder"
    folder.write_text("")
    error = token_error(folder)
    assert error.reason == "cannot be read (Not a directory)"


def test_an_empty_token_file_is_no_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(" \n")
    assert tokens.read_token(str(tmp_path)) is None


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=60))
def test_fuzzed_token_text_parses_or_raises_token_file_error(text: str) -> None:
    try:
        token = tokens.parse_token(text)
    except tokens.TokenFileError:
        return
    assert 1 <= token.port <= 65535 and token.serialize() == text.strip()


def test_writing_over_a_folder_refuses_before_writing(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    with pytest.raises(tokens.TokenFileError, match="is a folder, so no token can be saved"):
        tokens.write_token(tokens.Token(SECRET, "h", 1), str(tmp_path))
    with pytest.raises(tokens.TokenFileError):
        tokens.check_writable(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]
    assert list((tmp_path / "token").iterdir()) == []


def test_writing_into_a_folder_that_is_a_file_is_a_token_file_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-folder"
    folder.write_text("kept")
    with pytest.raises(tokens.TokenFileError, match="cannot be written") as info:
        tokens.write_token(tokens.Token(SECRET, "h", 1), str(folder))
    assert info.value.path == folder / "token" and "auth.token_dir" in str(info.value)
    assert folder.read_text() == "kept"


def test_replacing_a_garbage_token_leaves_only_the_new_one(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"\xff\xfe garbage")
    tokens.write_token(tokens.Token("new", "h", 4064), str(tmp_path))
    assert tokens.read_token(str(tmp_path)) == tokens.Token("new", "h", 4064)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]


def test_removing_a_folder_in_place_of_the_token_is_a_token_file_error(tmp_path: Path
                                                                       ) -> None:
    (tmp_path / "token").mkdir()
    with pytest.raises(tokens.TokenFileError, match=r"is a folder .*Delete"):
        tokens.remove_token(str(tmp_path))
    assert not tokens.remove_token(str(tmp_path), only_key="anything")
    assert (tmp_path / "token").is_dir()

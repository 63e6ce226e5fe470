"""No traceback reaches a CLI user: every failure is one ``error:`` line and writes nothing.

Each case runs the real command in a new process (``python -m cellprofiler_omero``),
as a user would, and checks: a non-zero exit, exactly one line on stderr starting with
``error:``, nothing on stdout, and no token or output file left behind (the token
folder is the same before and after). Bad links, token files that cannot be used,
a server that accepts the connection and never answers, and links naming a user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.cli import EXIT_BUG, main
from cellprofiler_omero.core.session import HANDOFF_ENV
from cellprofiler_omero.emulator import Emulator

Result = tuple[int, str, str]

#: Short, so a silent server costs a second per command (the default is 15 s).
TIMEOUT_SECONDS = 1


# -- helpers -------------------------------------------------------------------------------


def environment(tmp_path: Path, host: str, port: int, **extra: str) -> dict[str, str]:
    """A child environment with a private token folder, no settings file, ``host:port``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMERO_PASSWORD", HANDOFF_ENV) and not k.startswith("CELLPROFILER_OMERO_")}
    env.update({"OMERO_USER_TOKEN_DIR": str(tmp_path / "tokens"),
                "CELLPROFILER_OMERO_CONFIG": str(tmp_path / "no-such-config.toml"),
                "CELLPROFILER_OMERO_SERVER_HOST": host,
                "CELLPROFILER_OMERO_SERVER_PORT": str(port),
                "CELLPROFILER_OMERO_SERVER_CONNECT_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)})
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str) -> Result:
    done = subprocess.run([sys.executable, "-m", "cellprofiler_omero", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout, done.stderr


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its content (``None`` for folders)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def assert_fails_cleanly(env: dict[str, str], *args: str, needles: tuple[str, ...] = (),
                         output: Path | None = None) -> str:
    """Run the command; one ``error:`` line, non-zero exit, nothing printed or written."""
    tokens = Path(env["OMERO_USER_TOKEN_DIR"])
    before = snapshot(tokens)
    code, out, err = run_cli(env, *args)
    lines = err.strip().splitlines()
    assert code != 0, (code, out, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert out == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(tokens) == before, "the token folder changed"
    if output is not None:
        assert not output.exists(), f"{output} was written"
    return lines[0]


class SilentServer:
    """A TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:  # closed: the test is over
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self._socket.close()
        for conn in self._held:
            conn.close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """Pointing at the shared emulator, not logged in."""
    return environment(tmp_path, emulator.host, emulator.port)


@pytest.fixture
def silent_env(silent: SilentServer, tmp_path: Path) -> dict[str, str]:
    return environment(tmp_path, "127.0.0.1", silent.port, OMERO_PASSWORD="demo")


# -- bad links -----------------------------------------------------------------------------

HUGE = "9" * 5000


@pytest.mark.parametrize("ref", [f"omero:iid={HUGE}", f"Image:{HUGE}", f"dataset-{HUGE}",
                                 f"https://omero.example.org/webclient/?show=image-{HUGE}"],
                         ids=["legacy", "cli", "token", "web"])
def test_an_id_of_5000_digits_is_one_error_line(env: dict[str, str], tmp_path: Path,
                                                ref: str) -> None:
    output = tmp_path / "urls.txt"
    line = assert_fails_cleanly(env, "urls", ref, "-o", str(output),
                                needles=("too large for OMERO (5000 digits)",), output=output)
    assert len(line) < 600  # the link is shown shortened
    assert_fails_cleanly(env, "ls", ref, needles=("too large for OMERO",))


@pytest.mark.parametrize(("ref", "needle"), [
    ("https://demo@127.0.0.1/webclient/?show=image-1", "user name (or password)"),
    ("https://demo:s3cr3t@127.0.0.1/webclient/?show=image-1", "user name (or password)"),
    ("https://127.0.0.2\\@127.0.0.1/webclient/?show=image-1", "backslash"),
    ("Image:1@127.0.0.1", "--server HOST"),
], ids=["user", "user-password", "backslash-at", "ref-at-host"])
def test_a_link_naming_a_user_is_one_error_line(env: dict[str, str], tmp_path: Path,
                                                ref: str, needle: str) -> None:
    output = tmp_path / "urls.txt"
    line = assert_fails_cleanly(env, "urls", ref, "-o", str(output), needles=(needle,),
                                output=output)
    assert "s3cr3t" not in line
    assert_fails_cleanly(env, "ls", ref, needles=(needle,))


# -- token files ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"\xff\xfe\x00k\x00e\x00y", b"key@host:" + b"9" * 5000,
                                     b"garbage"], ids=["not-utf8", "huge-port", "garbage"])
def test_an_unusable_token_file_is_one_error_line_naming_it(env: dict[str, str],
                                                            tmp_path: Path,
                                                            content: bytes) -> None:
    token = Path(env["OMERO_USER_TOKEN_DIR"]) / "token"
    token.parent.mkdir()
    token.write_bytes(content)
    output = tmp_path / "urls.txt"
    for args in (("whoami",), ("ls",), ("urls", "Image:1", "-o", str(output))):
        assert_fails_cleanly(env, *args, needles=(f"token file {token}",
                                                  "cellprofiler-omero logout"), output=output)
    # What the message says to do works.
    code, out, err = run_cli(env, "logout")
    assert code == 0 and err == "" and f"Deleted the unusable token file {token}" in out
    assert not token.exists()


def test_a_folder_in_place_of_the_token_is_one_error_line_and_never_written(
        env: dict[str, str]) -> None:
    token = Path(env["OMERO_USER_TOKEN_DIR"]) / "token"
    token.mkdir(parents=True)
    login_env = dict(env, OMERO_PASSWORD="demo")
    assert_fails_cleanly(login_env, "login", "--user", "demo", "--save-token",
                         needles=(f"{token} is a folder",))
    assert_fails_cleanly(env, "whoami", needles=(f"{token} is a folder", "Remove the folder"))
    assert_fails_cleanly(env, "logout", needles=(f"{token} is a folder",))
    assert token.is_dir() and list(token.iterdir()) == []


def test_a_token_folder_that_is_a_file_is_one_error_line(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("kept")
    env = dict(env, OMERO_USER_TOKEN_DIR=str(not_a_folder))
    assert_fails_cleanly(env, "whoami", needles=("cannot be read (Not a directory)",))
    assert_fails_cleanly(dict(env, OMERO_PASSWORD="demo"), "login", "--user", "demo",
                         "--save-token", needles=("cannot be written",))
    assert not_a_folder.read_text() == "kept"


# -- a server that accepts the connection and never answers --------------------------------


@pytest.mark.timeout(240)
def test_a_silent_server_is_no_answer_within_the_connect_timeout(
        silent: SilentServer, silent_env: dict[str, str], tmp_path: Path) -> None:
    accepted = silent.accepted
    output = tmp_path / "urls.txt"
    needles = (f"no answer from 127.0.0.1:{silent.port} within {TIMEOUT_SECONDS} s",
               "server.connect_timeout_seconds",
               "$CELLPROFILER_OMERO_SERVER_CONNECT_TIMEOUT_SECONDS")
    assert_fails_cleanly(silent_env, "login", "--user", "demo", "--save-token", needles=needles)
    # A saved token for that server is joined, fails the same way, and stays as it was.
    token = Path(silent_env["OMERO_USER_TOKEN_DIR"]) / "token"
    token.parent.mkdir()
    token.write_text(f"some-key@127.0.0.1:{silent.port}")
    for args in (("whoami",), ("ls",)):
        assert_fails_cleanly(silent_env, *args, needles=needles)
    assert_fails_cleanly(silent_env, "urls", "Image:1", "-o", str(output), needles=needles,
                         output=output)
    assert token.read_text() == f"some-key@127.0.0.1:{silent.port}"
    # The fault fired: every command connected (and was never answered).
    assert silent.accepted >= accepted + 4


def test_a_refused_port_is_cannot_reach(env: dict[str, str]) -> None:
    assert_fails_cleanly(dict(env, OMERO_PASSWORD="demo"), "login", "--user", "demo",
                         "--port", "1", needles=("cannot reach 127.0.0.1:1",
                                                 "ConnectionRefusedException"))


@pytest.mark.parametrize("value", ["0", "nan", "-5", "forever"])
def test_a_bad_connect_timeout_setting_is_one_error_line(env: dict[str, str],
                                                         value: str) -> None:
    env = dict(env, CELLPROFILER_OMERO_SERVER_CONNECT_TIMEOUT_SECONDS=value)
    assert_fails_cleanly(env, "whoami", needles=("server.connect_timeout_seconds",))


# -- other things a user can get wrong -----------------------------------------------------


def test_a_settings_file_that_is_not_utf8_is_one_error_line(env: dict[str, str],
                                                            tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes('[server]\nhost = "sérveur"\n'.encode("latin-1"))
    assert_fails_cleanly(dict(env, CELLPROFILER_OMERO_CONFIG=str(config)), "whoami",
                         needles=(f"{config} is not valid TOML: not UTF-8 text",))


def test_an_output_file_that_cannot_be_written_is_one_error_line(
        env: dict[str, str], seeded: dict[str, Any], tmp_path: Path) -> None:
    code, _, err = run_cli(dict(env, OMERO_PASSWORD="demo"), "login", "--user", "demo",
                           "--save-token")
    assert code == 0, err
    output = tmp_path / "no-such-folder" / "urls.txt"
    assert_fails_cleanly(env, "urls", f"Dataset:{seeded['dataset']}", "-o", str(output),
                         needles=(f"Cannot write {output} (No such file or directory)",),
                         output=output)


def test_an_unexpected_failure_is_one_line_and_minus_vv_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cellprofiler_omero.commands import browse

    def broken(args: Any) -> int:
        raise RuntimeError("something\nunforeseen")

    monkeypatch.setattr(browse, "cmd_ls", broken)
    assert main(["ls"]) == EXIT_BUG
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: unexpected RuntimeError: something unforeseen (a bug in cellprofiler-omero: "
        "run again with -vv to see where, and please report it)"]
    with pytest.raises(RuntimeError, match="unforeseen"):
        main(["-vv", "ls"])


@pytest.mark.parametrize(("args", "needle"), [
    (("ls", "--limit", HUGE), "is too large"),
    (("ls", "--limit", "3000000000"), "at most 2147483647"),
    (("ls", "--offset", HUGE), "is too large"),
    (("whoami", "--port", HUGE), "is not a port number"),
    (("login", "--user", "demo", "--time-to-idle", HUGE), "is too long"),
], ids=["limit", "limit-java-int", "offset", "port", "time-to-idle"])
def test_numbers_of_any_length_in_options_are_usage_errors(
        capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert len(lines[0]) < 300

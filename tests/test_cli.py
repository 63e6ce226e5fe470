"""The command line against the emulator: login/logout/whoami, ls, urls, errors, help.

Where the process boundary matters (a token used by a later process, one line on
stderr, nothing leaking into the output) the CLI runs as ``python -m
cellprofiler_omero``; elsewhere ``main([...])`` runs in-process for speed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.cli import main
from cellprofiler_omero.commands.common import duration_minutes
from cellprofiler_omero.commands.urls import channel_columns
from cellprofiler_omero.core import tokens
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.session import HANDOFF_ENV, SessionManager
from cellprofiler_omero.emulator import Emulator, SeedOptions
from tests.conftest import run

Result = tuple[int, str, str]
Cli = Callable[..., Result]


# -- helpers -------------------------------------------------------------------------------


def cli_environment(emulator: Emulator, token_dir: Path, **extra: str) -> dict[str, str]:
    """A child environment pointing at ``emulator``, with private tokens and no settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMERO_PASSWORD", HANDOFF_ENV) and not k.startswith("CELLPROFILER_OMERO_")}
    env.update({"OMERO_USER_TOKEN_DIR": str(token_dir),
                "CELLPROFILER_OMERO_CONFIG": str(token_dir.parent / "no-such-config.toml"),
                "CELLPROFILER_OMERO_SERVER_HOST": emulator.host,
                "CELLPROFILER_OMERO_SERVER_PORT": str(emulator.port)})
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str) -> Result:
    """Run the command in a new process (stdin is not a terminal)."""
    done = subprocess.run([sys.executable, "-m", "cellprofiler_omero", *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stdout, done.stderr


def assert_one_error_line(result: Result, *needles: str) -> str:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code != 0, result
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def save_token(emulator: Emulator, folder: Path, user: str) -> tokens.Token:
    """Log in as ``user`` (password = user name) and save a token in ``folder``."""
    settings = Settings().replace({"server.host": emulator.host, "server.port": emulator.port,
                                   "auth.token_dir": str(folder),
                                   "auth.keepalive_seconds": 3600})
    manager = SessionManager(settings)
    run(lambda: manager.connect(user=user, password=user))
    run(manager.save_token)
    run(manager.close)
    token = tokens.read_token(str(folder))
    assert token is not None
    return token


def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
               emulator: Emulator, token_dir: Path) -> Cli:
    """``main([...])`` in this process with the same environment a child would get."""
    for name in list(os.environ):
        if name.startswith("CELLPROFILER_OMERO_") or name in ("OMERO_PASSWORD", HANDOFF_ENV):
            monkeypatch.delenv(name)
    for name, value in cli_environment(emulator, token_dir).items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)

    def call(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_tokens(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token folder holding a session of demo on the shared emulator."""
    folder = tmp_path_factory.mktemp("demo-tokens")
    save_token(emulator, folder, "demo")
    return folder


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        emulator: Emulator, demo_tokens: Path) -> Cli:
    """In-process CLI logged in as demo (through the saved token)."""
    return in_process(monkeypatch, capsys, emulator, demo_tokens)


@pytest.fixture
def child_env(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """Environment for CLI subprocesses with an empty private token folder."""
    return cli_environment(emulator, tmp_path / "tokens")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator whose "Nuclei and cytoplasm" dataset holds 521 images (1 + 520 extra)."""
    options = SeedOptions(seed=2, fields=1, field_size=64, large_size=0, plate_rows=1,
                          plate_columns=1, plate_fields=1, plate_field_size=32,
                          extra_images=520)
    with Emulator(tmp_path_factory.mktemp("big-emulator"), seed_options=options) as emu:
        yield emu


@pytest.fixture
def big_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], big: Emulator,
            tmp_path: Path) -> Cli:
    folder = tmp_path / "big-tokens"
    save_token(big, folder, "demo")
    return in_process(monkeypatch, capsys, big, folder)


# -- login, whoami, logout -----------------------------------------------------------------


def test_login_saves_a_private_token_that_a_new_process_uses(child_env: dict[str, str]
                                                             ) -> None:
    env = dict(child_env, OMERO_PASSWORD="demo")
    code, out, err = run_cli(env, "login", "--user", "demo", "--save-token",
                             "--time-to-idle", "90m")
    assert code == 0, err
    token_file = Path(child_env["OMERO_USER_TOKEN_DIR"]) / "token"
    assert str(token_file) in out and "1 h 30 min" in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = tokens.parse_token(token_file.read_text())
    assert (token.host, token.port) == (child_env["CELLPROFILER_OMERO_SERVER_HOST"],
                                        int(child_env["CELLPROFILER_OMERO_SERVER_PORT"]))
    assert token.key not in out + err and "demo" not in err

    # A new process, no password anywhere: the token is the session.
    code, out, err = run_cli(child_env, "whoami")
    assert code == 0, err
    assert "demo" in out and "saved omero-user-token" in out and str(token_file) in out
    code, out, err = run_cli(child_env, "whoami", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["user"], data["group"], data["source"]) == ("demo", "demo", "token")
    assert data["port"] == token.port and data["token_file"] == str(token_file)
    assert token.key not in out + err


def test_whoami_names_a_parent_process_hand_off(manager: Any, emulator: Emulator,
                                                tmp_path: Path) -> None:
    handoff = manager.export_for_workers()
    env = cli_environment(emulator, tmp_path / "no-tokens", **handoff)
    code, out, err = run_cli(env, "whoami", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["user"], data["source"]) == ("demo", "environment")
    assert "token_file" not in data and manager.connected
    code, out, _ = run_cli(env, "whoami")
    assert "handed over by a parent process" in out
    assert run(manager.connection).session_key not in out


def test_login_without_save_token_only_checks(child_env: dict[str, str]) -> None:
    code, out, err = run_cli(dict(child_env, OMERO_PASSWORD="demo"), "login", "--user", "demo")
    assert code == 0, err
    assert "Credentials accepted" in out and "--save-token" in out
    assert not (Path(child_env["OMERO_USER_TOKEN_DIR"]) / "token").exists()


def test_login_without_password_outside_a_terminal_says_how(child_env: dict[str, str]) -> None:
    assert_one_error_line(run_cli(child_env, "login", "--user", "demo"), "OMERO_PASSWORD")
    assert_one_error_line(run_cli(dict(child_env, OMERO_PASSWORD="demo"), "login"), "--user")


def test_logout_ends_the_session_and_removes_the_token(child_env: dict[str, str],
                                                       settings_for: Any) -> None:
    code, _, err = run_cli(dict(child_env, OMERO_PASSWORD="demo"), "login", "--user", "demo",
                           "--save-token")
    assert code == 0, err
    token_file = Path(child_env["OMERO_USER_TOKEN_DIR"]) / "token"
    key = tokens.parse_token(token_file.read_text()).key

    code, out, err = run_cli(child_env, "logout")
    assert code == 0, err
    assert "Ended the session of demo" in out and "deleted" in out
    assert not token_file.exists()
    assert key not in out + err
    # The session is gone on the server, not merely forgotten here.
    other = SessionManager(settings_for())
    with pytest.raises(AuthError):
        run(lambda: other.connect(session_key=key))

    assert_one_error_line(run_cli(child_env, "whoami"), "Not logged in")
    code, out, _ = run_cli(child_env, "logout")
    assert code == 0 and "no saved token" in out


def test_logout_of_an_expired_token_still_removes_it(emulator: Emulator, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    folder = tmp_path / "expired"
    token = save_token(emulator, folder, "demo")
    assert emulator.expire_sessions(keys=[token.key]) >= 1
    call = in_process(monkeypatch, capsys, emulator, folder)
    code, _, err = call("whoami")
    assert code == 1 and "saved token's session" in err and "has ended" in err
    code, out, _ = call("logout")
    assert code == 0 and "already ended" in out
    assert not (folder / "token").exists()


def test_duration_forms() -> None:
    assert [duration_minutes(t) for t in ("90m", "2h", "600s", "45", "1h30m", "1d", "61s")] \
        == [90, 120, 10, 45, 90, 1440, 2]
    for bad in ("", "abc", "10x", "0", "h"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"duration|shorter"):
            duration_minutes(bad)


# -- ls ------------------------------------------------------------------------------------


def lines_of(out: str) -> list[list[str]]:
    """Rows of ls output split on the column gaps (header dropped)."""
    return [[cell for cell in line.split("  ") if cell.strip()] for line in
            out.strip().splitlines()[1:]]


def test_ls_top_level_lists_projects_and_screens(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, err = cli("ls")
    assert code == 0, err
    rows = lines_of(out)
    assert [r[0] for r in rows] == [f"Project:{seeded['project']}", f"Screen:{seeded['screen']}"]
    assert rows[0][1].strip() == "CellProfiler demo" and rows[1][2].strip() == "1 plate"
    assert err == ""


def test_ls_dataset_shows_image_sizes_and_types(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"Dataset:{seeded['dataset']}")
    assert code == 0
    assert out.splitlines()[0].split() == ["REF", "NAME", "SIZE", "X×Y×Z×C×T", "TYPE"]
    rows = lines_of(out)
    assert [r[0].strip() for r in rows] == [f"Image:{i}" for i in seeded["fields"]]
    assert all(r[2].strip() == "512×512×1×2×1" and r[3].strip() == "uint16" for r in rows)


def test_ls_project_and_web_link_forms(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"project-{seeded['project']}")
    assert code == 0
    names = [r[1].strip() for r in lines_of(out)]
    assert "Nuclei and cytoplasm" in names and "Z stack" in names
    assert f"Dataset:{seeded['dataset']}" in out
    link = f"https://127.0.0.1/webclient/?show=dataset-{seeded['dataset']}"
    assert cli("ls", link)[1] == cli("ls", f"Dataset:{seeded['dataset']}")[1]


def test_ls_plate_lists_wells_in_order(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"Plate:{seeded['plate']}")
    assert code == 0
    rows = lines_of(out)
    assert [r[1].strip() for r in rows] == ["A01", "A02", "A03", "B01", "B02", "B03"]
    assert [r[0].strip() for r in rows] == [f"Well:{seeded['wells'][w]}" for w in
                                            ("A01", "A02", "A03", "B01", "B02", "B03")]
    assert all(r[2].strip() == "2 fields" for r in rows)


def test_ls_well_lists_its_fields(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"Well:{seeded['wells']['B02']}")
    assert code == 0
    rows = lines_of(out)
    assert [r[1].strip() for r in rows] == ["Field 1: B02_f0", "Field 2: B02_f1"]
    assert all(r[2].strip() == "128×128×1×2×1" for r in rows)


def test_ls_image_lists_the_image_itself(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"omero:iid={seeded['zstack']}", "--json")
    assert code == 0
    item = json.loads(out)["items"][0]
    assert item["size"] == {"x": 256, "y": 256, "z": 8, "c": 3, "t": 1}
    assert item["pixel_type"] == "uint16"


def test_ls_json_of_a_plate(cli: Cli, seeded: dict[str, Any]) -> None:
    code, out, _ = cli("ls", f"Plate:{seeded['plate']}", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["parent"], data["offset"], data["total"], data["next_offset"]) == \
        (f"Plate:{seeded['plate']}", 0, 6, None)
    first = data["items"][0]
    assert (first["name"], first["row"], first["column"], first["child_count"]) == \
        ("A01", 0, 0, 2)


@pytest.mark.slow
def test_ls_pages_a_large_dataset(big_cli: Cli, big: Emulator) -> None:
    dataset = f"Dataset:{big.seeded['dataset']}"
    code, out, err = big_cli("ls", dataset)
    assert code == 0
    assert len(lines_of(out)) == 100
    assert err.strip() == "showing 1–100 of 521, use --offset 100 or --all"

    code, out, err = big_cli("ls", dataset, "--offset", "500")
    assert len(lines_of(out)) == 21 and err.strip() == "showing 501–521 of 521"

    code, out, err = big_cli("ls", dataset, "--all")
    rows = lines_of(out)
    assert code == 0 and err == ""
    assert len(rows) == 521 and len({r[0] for r in rows}) == 521

    code, out, _ = big_cli("ls", dataset, "--json", "--limit", "50", "--offset", "100")
    page = json.loads(out)
    assert (page["offset"], page["total"], page["next_offset"], len(page["items"])) == \
        (100, 521, 150, 50)

    code, out, _ = big_cli("ls", dataset, "--json", "--all", "--limit", "200")
    every = json.loads(out)
    assert (every["total"], every["next_offset"], len(every["items"])) == (521, None, 521)
    names = [item["name"] for item in every["items"]]
    assert names == sorted(names, key=str.lower)


# -- urls ----------------------------------------------------------------------------------


def test_urls_of_a_dataset_in_both_forms(cli: Cli, seeded: dict[str, Any], tmp_path: Path
                                         ) -> None:
    code, out, _ = cli("urls", f"Dataset:{seeded['dataset']}")
    assert code == 0
    assert out.splitlines() == [f"https://127.0.0.1/webclient/?show=image-{i}"
                                for i in seeded["fields"]]
    code, out, _ = cli("urls", f"Dataset:{seeded['dataset']}", "--form", "legacy")
    assert out.splitlines() == [f"omero:iid={i}" for i in seeded["fields"]]
    target = tmp_path / "files.txt"
    code, out, err = cli("urls", f"Dataset:{seeded['dataset']}", f"Image:{seeded['fields'][0]}",
                         "--web-base", "https://omero.example.org/omero", "-o", str(target))
    assert code == 0 and out == "" and "3 image(s)" in err
    assert target.read_text().splitlines() == [
        f"https://omero.example.org/omero/webclient/?show=image-{i}" for i in seeded["fields"]]


def plate_rows(cli: Cli, ref: str) -> list[dict[str, str]]:
    code, out, err = cli("urls", ref, "--loaddata")
    assert code == 0, err
    return list(csv.DictReader(io.StringIO(out)))


def test_urls_loaddata_of_a_plate_has_correct_well_metadata(cli: Cli, seeded: dict[str, Any]
                                                            ) -> None:
    rows = plate_rows(cli, f"Plate:{seeded['plate']}")
    assert list(rows[0]) == [
        "URL_DAPI", "Frame_DAPI", "URL_Cytoplasm", "Frame_Cytoplasm", "Metadata_Plate",
        "Metadata_Well", "Metadata_Row", "Metadata_Column", "Metadata_Field",
        "Metadata_ImageID", "Metadata_ImageName"]
    assert len(rows) == 12
    for row in rows:
        # The seed names each plate image "<well>_f<field index>".
        well, field = row["Metadata_ImageName"].split("_f")
        url = f"https://127.0.0.1/webclient/?show=image-{row['Metadata_ImageID']}"
        assert (row["URL_DAPI"], row["URL_Cytoplasm"]) == (url, url)
        assert (row["Frame_DAPI"], row["Frame_Cytoplasm"]) == ("0", "1")
        assert row["Metadata_Plate"] == "Plate 1"
        assert row["Metadata_Well"] == well
        assert (row["Metadata_Row"], row["Metadata_Column"]) == (well[0], well[1:])
        assert row["Metadata_Field"] == str(int(field) + 1)
    wells = [row["Metadata_Well"] for row in rows]
    assert wells == sorted(wells) and len(set(wells)) == 6


def test_urls_of_a_screen_are_its_plates_images(cli: Cli, seeded: dict[str, Any]) -> None:
    code, screen, _ = cli("urls", f"Screen:{seeded['screen']}")
    assert code == 0
    assert len(screen.splitlines()) == 12
    assert screen == cli("urls", f"Plate:{seeded['plate']}")[1]
    rows = plate_rows(cli, f"screen-{seeded['screen']}")
    assert [r["Metadata_ImageID"] for r in rows] == \
        [line.rsplit("-", 1)[1] for line in screen.splitlines()]


def test_urls_loaddata_of_a_z_stack_has_a_row_per_plane(cli: Cli, seeded: dict[str, Any]
                                                        ) -> None:
    rows = plate_rows(cli, f"Image:{seeded['zstack']}")
    assert len(rows) == 8
    assert "Metadata_Plate" not in rows[0]
    for z, row in enumerate(rows):
        assert row["Metadata_Z"] == str(z) and row["Metadata_T"] == "0"
        # XYZCT: index = z + size_z * c
        assert (row["Frame_DAPI"], row["Frame_Cytoplasm"], row["Frame_Spots"]) == \
            (str(z), str(z + 8), str(z + 16))


def test_urls_loaddata_refuses_images_with_different_channels(cli: Cli, seeded: dict[str, Any]
                                                              ) -> None:
    code, out, err = cli("urls", f"Dataset:{seeded['dataset']}", f"Image:{seeded['rgb']}",
                         "--loaddata")
    assert code == 1 and out == ""
    assert err.startswith("error: The images disagree on channel names") and \
        len(err.strip().splitlines()) == 1


def test_channel_columns_are_cellprofiler_names() -> None:
    assert channel_columns(["DAPI", "GFP 488", "488", "", "DAPI"]) == \
        ["DAPI", "GFP_488", "Channel_488", "C3", "DAPI_2"]


# -- errors and help -----------------------------------------------------------------------


def test_bad_reference_is_one_line(child_env: dict[str, str]) -> None:
    assert_one_error_line(run_cli(child_env, "ls", "Dataset:abc"), "'Dataset:abc'")
    assert_one_error_line(run_cli(child_env, "urls", "not a ref"), "'not a ref'")


def test_wrong_password_is_one_line(child_env: dict[str, str]) -> None:
    line = assert_one_error_line(
        run_cli(dict(child_env, OMERO_PASSWORD="wrong"), "login", "--user", "demo"),
        "refused the login")
    assert "wrong" not in line


def test_unreachable_server_is_one_line(child_env: dict[str, str]) -> None:
    env = dict(child_env, OMERO_PASSWORD="demo")
    assert_one_error_line(run_cli(env, "login", "--user", "demo", "--port", "1"),
                          "cannot reach 127.0.0.1:1")


def test_other_users_data_is_one_line(emulator: Emulator, seeded: dict[str, Any],
                                      tmp_path: Path) -> None:
    save_token(emulator, tmp_path / "other", "other")
    env = cli_environment(emulator, tmp_path / "other")
    assert_one_error_line(run_cli(env, "ls", f"Dataset:{seeded['dataset']}"),
                          f"Dataset {seeded['dataset']}", "other may not read it")


def test_not_logged_in_is_one_line(child_env: dict[str, str]) -> None:
    assert_one_error_line(run_cli(child_env, "ls"), "Not logged in", "login")


def test_usage_errors_are_one_line(child_env: dict[str, str]) -> None:
    code, _, err = run_cli(child_env, "ls", "--limit", "0")
    assert code == 2 and err.strip().splitlines() == [
        "error: argument --limit: '0' must be 1 or more (see 'cellprofiler-omero ls --help')"]


@pytest.mark.parametrize("command", ["", "login", "logout", "whoami", "ls", "urls", "emulator",
                                     "plugins-dir", "bench"])
def test_help_works_for_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, "--help"] if command else ["--help"]
    code: Any
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help exits
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "usage:" in out.lower()


def test_help_documents_the_password_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["login", "--help"])
    out = capsys.readouterr().out
    assert "OMERO_PASSWORD" in out and "--save-token" in out and "--time-to-idle" in out


def test_bench_hands_its_arguments_over(monkeypatch: pytest.MonkeyPatch) -> None:
    from cellprofiler_omero import benchmarks

    seen: list[list[str]] = []
    monkeypatch.setattr(benchmarks, "main", lambda argv: seen.append(argv) or 3, raising=False)
    assert main(["bench", "--help", "run", "-x"]) == 3
    assert seen == [["--help", "run", "-x"]]

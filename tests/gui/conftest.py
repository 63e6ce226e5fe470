"""Fixtures of the GUI tests: the GUI venv, a private X display, an emulator, the driver.

The tests run under the main ``.venv``'s pytest; CellProfiler's window runs in
``.venv-gui`` (Debian's Python with its wxPython, made by ``scripts/setup_gui.sh``) as a
subprocess driven by ``gui_driver.py``. They are skipped only when that set-up is
impossible here (the script exits 3 and says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.emulator import Emulator, SeedOptions

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "gui_driver.py"
ARTIFACTS = ROOT / "test-artifacts" / "gui"
IMPOSSIBLE = 3  # setup_gui.sh's exit code when the set-up cannot be done here

SEED = SeedOptions(seed=1, fields=3, field_size=512, large_size=2048, plate_rows=2,
                   plate_columns=3, plate_fields=2, plate_field_size=128)

# CellProfiler's configuration for a fresh user: no telemetry prompt (otherwise the first
# modal dialog), no start-up blurb, no update check, no "analysis complete" message box.
CELLPROFILER_CONFIG = """\
Telemetry=0
Telemetry\\ prompt=0
StartupBlurb=0
CheckForUpdates=Disabled
ShowAnalysisCompleteDlg=False
ShowExitingTestModeDlg=False
WarnAboutOldPipeline=False
"""

_setup_result: dict[str, Any] = {}


@pytest.fixture(scope="session")
def gui_python() -> Path:
    """The GUI venv's Python, after ``scripts/setup_gui.sh`` (run once per session)."""
    if not _setup_result:
        started = time.monotonic()
        proc = subprocess.run([str(ROOT / "scripts" / "setup_gui.sh")], cwd=ROOT,
                              capture_output=True, text=True)
        _setup_result.update(code=proc.returncode, out=proc.stdout + proc.stderr,
                             seconds=time.monotonic() - started)
        print(f"\n[gui] scripts/setup_gui.sh: exit {proc.returncode} in "
              f"{_setup_result['seconds']:.1f} s", file=sys.stderr)
    if _setup_result["code"] == IMPOSSIBLE:
        reason = _setup_result["out"].strip().splitlines()[-1]
        print(f"\n[gui] skipping the GUI tests: {reason}", file=sys.stderr)
        pytest.skip(f"GUI set-up impossible here: {reason}")
    if _setup_result["code"] != 0:
        pytest.fail(f"scripts/setup_gui.sh failed:\n{_setup_result['out'][-4000:]}")
    return ROOT / os.environ.get("VENV_GUI", ".venv-gui") / "bin" / "python"


@pytest.fixture(scope="session")
def display(gui_python: Path) -> Iterator[str]:
    """A private Xvfb display (Xvfb picks a free number and reports it)."""
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                             "1600x1000x24", "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 30
    with os.fdopen(read_fd, "rb") as reader:
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = reader.read(1)
            if not chunk:
                break
            number += chunk
    name = f":{int(number)}" if number.strip() else ""
    # Ready means a client can connect (asked with xdotool, which needs the server).
    while name and time.monotonic() < deadline and subprocess.run(
            ["xdotool", "getdisplaygeometry"], env={**os.environ, "DISPLAY": name},
            capture_output=True).returncode != 0:
        time.sleep(0.1)
    if not name or xvfb.poll() is not None:
        xvfb.kill()
        pytest.fail("Xvfb did not start")
    print(f"\n[gui] Xvfb on display {name}", file=sys.stderr)
    try:
        yield name
    finally:
        xvfb.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            xvfb.wait(10)


@pytest.fixture(scope="module")
def gui_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator of the GUI tests' own, so its session list is theirs alone."""
    with Emulator(tmp_path_factory.mktemp("gui-emulator"), seed_options=SEED,
                  pyramid_threshold=1024) as emu:
        yield emu


def free_port() -> int:
    """A local TCP port nothing listens on (an "unreachable server")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GuiUser:
    """One user's home: CellProfiler's configuration, tokens, outputs."""

    home: Path
    outputs: Path = field(init=False)

    def __post_init__(self) -> None:
        config = self.home / ".config" / "CellProfiler"
        config.mkdir(parents=True, exist_ok=True)
        (config / "CellProfilerLocal.cfg").write_text(CELLPROFILER_CONFIG)
        self.outputs = self.home / "outputs"
        self.outputs.mkdir(exist_ok=True)

    @property
    def token_dir(self) -> Path:
        return self.home / "omero-tokens"

    @property
    def config_file(self) -> Path:
        return self.home / ".config" / "CellProfiler" / "CellProfilerLocal.cfg"

    def env(self, display: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELLPROFILER_OMERO_", "OMERO_", "VIRTUAL_ENV"))}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_CACHE_HOME=str(self.home / ".cache"), DISPLAY=display,
                   OMERO_USER_TOKEN_DIR=str(self.token_dir),
                   CELLPROFILER_OMERO_CONFIG=str(self.home / "no-cellprofiler-omero.toml"),
                   NO_AT_BRIDGE="1", PYTHONUNBUFFERED="1")
        env.update(extra)
        return env


def run_driver(gui_python: Path, display: str, user: GuiUser, scenario: str, *,
               port: int, cellprofiler_args: list[str] | None = None, label: str = "",
               shot_name: str = "", timeout: float = 600, **env: str) -> dict[str, Any]:
    """Run one scenario in a fresh CellProfiler and return its results (and timings).

    ``label`` names the run's result and log files (default: the scenario's name).
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    label = label or scenario
    out = user.home / f"{label}.json"
    log = ARTIFACTS / f"{label}.log"
    command = [str(gui_python), str(DRIVER), scenario, "--out", str(out), "--shots",
               str(ARTIFACTS), "--port", str(port), "--closed-port", str(free_port()),
               "--timeout", str(timeout - 60), "--shot-name", shot_name, "--",
               *(cellprofiler_args or [])]
    started = time.monotonic()
    with log.open("w") as log_file:
        proc = subprocess.run(command, cwd=ROOT, env=user.env(display, **env),
                              stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["process_exit"] = proc.returncode
    results["seconds"] = time.monotonic() - started
    results["log_file"] = str(log)
    return results


def assert_ok(results: dict[str, Any]) -> None:
    """The scenario ran to its end and CellProfiler quit by itself."""
    assert results.get("error") is None, results.get("error") + _tail(results)
    assert results.get("finished"), "the scenario did not finish" + _tail(results)
    assert results.get("process_exit") == 0, f"exit {results.get('process_exit')}" + \
        _tail(results)


def _tail(results: dict[str, Any]) -> str:
    path = Path(results.get("log_file", ""))
    if not path.is_file():
        return ""
    lines = [ln for ln in path.read_text(errors="replace").splitlines()
             if "Gtk-CRITICAL" not in ln and ln.strip()]
    return "\n--- log tail ---\n" + "\n".join(lines[-60:])


@pytest.fixture(scope="module")
def gui_user(tmp_path_factory: pytest.TempPathFactory) -> GuiUser:
    """The home shared by the scenarios that follow one user across restarts."""
    return GuiUser(tmp_path_factory.mktemp("gui-user"))


@pytest.fixture(scope="session", autouse=True)
def _clean_artifacts() -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)

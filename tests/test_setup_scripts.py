"""scripts/setup_gui.sh and scripts/setup_browser.sh install system packages one way
(scripts/lib_apt.sh) and say "impossible here" alike: exit 3, the reason on the last line.

Run on their dry paths only (``SETUP_DRY_RUN=1``, or a PATH without apt-get): nothing is
installed, whoever runs the tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPOSSIBLE = 3
APT = "apt-get -o DPkg::Lock::Timeout=300 -y -q"

#: script → (its tag, what makes its system check fail, the packages it needs)
SCRIPTS = {
    "setup_gui.sh": ("setup-gui", {"SYSTEM_PYTHON": "/nonexistent/python3"},
                     "python3-wxgtk4.0 xvfb xdotool imagemagick python3-venv"),
    "setup_browser.sh": ("setup-browser", {"CHROMIUM": "/nonexistent/chromium"},
                         "chromium chromium-driver"),
}


def _run(script: str, env: dict[str, str]) -> tuple[int, list[str]]:
    done = subprocess.run(["/bin/bash", str(ROOT / "scripts" / script)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stderr.strip().splitlines()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_missing_package_set_is_impossible_here_with_exit_3_and_says_what_to_run(
        script: str) -> None:
    tag, broken, packages = SCRIPTS[script]
    code, err = _run(script, {**os.environ, **broken, "SETUP_DRY_RUN": "1"})
    assert code == IMPOSSIBLE, err
    assert err[-1].startswith(f"[{tag}] IMPOSSIBLE: ")
    if os.geteuid() == 0:
        # Root would install: the dry run names the exact command and installs nothing.
        assert (f"[{tag}] would run: DEBIAN_FRONTEND=noninteractive {APT} install "
                f"--no-install-recommends {packages}") in err
        assert err[-1] == f"[{tag}] IMPOSSIBLE: dry run: {packages} not installed."
    else:
        assert err[-1].endswith(f"ask an administrator to run: apt-get install -y {packages}")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_without_apt_get_the_set_up_is_impossible_here_with_exit_3(
        script: str, tmp_path: Path) -> None:
    tag, broken, packages = SCRIPTS[script]
    bin_dir = tmp_path / "bin"  # only what the scripts use before apt-get
    bin_dir.mkdir()
    for tool in ("id", "dirname", "cat"):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    code, err = _run(script, {**os.environ, **broken, "PATH": str(bin_dir)})
    assert code == IMPOSSIBLE, err
    if os.geteuid() == 0:
        assert err[-1].startswith(f"[{tag}] IMPOSSIBLE: no apt-get: this set-up needs "
                                  f"Debian's {packages} packages")
    else:  # without root the scripts stop before looking for apt-get
        assert f"[{tag}] IMPOSSIBLE: need {packages} (" in err[-1]

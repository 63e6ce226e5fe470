#!/usr/bin/env bash
# Create or update .venv-gui: a virtual environment in which the CellProfiler 5 desktop GUI
# runs with cellprofiler-omero (the GUI tests drive it; users may run it too).
#
# PyPI has wxPython for Linux only as a source archive, so the GUI uses Debian's
# python3-wxgtk4.0 through a venv made from Debian's own Python with
# --system-site-packages (see FACTS.md, "The desktop GUI"). Everything else comes from
# the package index, pinned by constraints.txt.
#
# Idempotent: a second run checks a stamp (a hash of the inputs) and returns at once.
# Exits 3, with the reason on its last line, only when the set-up is impossible here
# (scripts/lib_apt.sh, shared with setup_browser.sh: system packages missing and no root
# to install them, no apt-get, or apt-get failed). SETUP_DRY_RUN=1 installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_GUI=${VENV_GUI:-.venv-gui}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
APT_PACKAGES=(python3-wxgtk4.0 xvfb xdotool imagemagick)
INPUTS=(pyproject.toml constraints.txt requirements-cellprofiler.txt scripts/setup_gui.sh
        scripts/zeroc_ice_wheel.py)

SETUP_TAG=setup-gui
# shellcheck source=scripts/lib_apt.sh
source scripts/lib_apt.sh

# -- system packages --------------------------------------------------------------------------
system_ready() {
  command -v Xvfb >/dev/null && command -v xdotool >/dev/null && command -v import >/dev/null \
    && [ -x "$SYSTEM_PYTHON" ] && "$SYSTEM_PYTHON" -c "import wx, venv, ensurepip" 2>/dev/null
}

apt_ensure system_ready "wx in Debian's $SYSTEM_PYTHON with venv, Xvfb, xdotool, import" \
  "${APT_PACKAGES[@]}" python3-venv

# -- the venv ---------------------------------------------------------------------------------
stamp="$VENV_GUI/.setup-done"
digest=$(cat "${INPUTS[@]}" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && [ -x "$VENV_GUI/bin/python" ]; then
  say "ready (up to date): $VENV_GUI"
  exit 0
fi

if [ ! -x "$VENV_GUI/bin/python" ]; then
  say "creating $VENV_GUI with $("$SYSTEM_PYTHON" --version) and the system site-packages"
  "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV_GUI"
fi
# Keep the venv out of git, ruff and every other tool that honours .gitignore.
echo '*' > "$VENV_GUI/.gitignore"
PY="$VENV_GUI/bin/python"
PIP=(pip_quiet "$PY" -m pip --disable-pip-version-check -q)
# pip's site configuration may name index folders that do not exist here; its warnings
# about them are noise, so they are filtered (every other message passes).
pip_quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# zeroc-ice 3.6.5 (no Python 3.11 wheel on PyPI): the cp311 wheel built with pyenv's 3.11.7
# imports fine under Debian's 3.11.2. The helper finds a supplied or cached wheel, or builds
# one once; it runs with a pyenv/venv Python because it builds against that interpreter.
if ! "$PY" -c "import Ice, sys; sys.exit(Ice.stringVersion() != '3.6.5')" 2>/dev/null; then
  ICE_PYTHON=${ICE_PYTHON:-}
  if [ -z "$ICE_PYTHON" ]; then
    if [ -x .venv/bin/python ]; then ICE_PYTHON=.venv/bin/python; else ICE_PYTHON=python3; fi
  fi
  wheel=$("$ICE_PYTHON" scripts/zeroc_ice_wheel.py)
  say "installing $wheel"
  "${PIP[@]}" install --no-deps "$wheel"
fi

say "installing cellprofiler-omero (editable) and its runtime requirements"
"${PIP[@]}" install -c constraints.txt --no-deps -e .
deps=$(mktemp)
trap 'rm -f "$deps"' EXIT
"$PY" - > "$deps" <<'EOF'
import tomllib

with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
"${PIP[@]}" install -c constraints.txt -r "$deps"

say "installing CellProfiler 5 (GUI, without its wxPython/mysqlclient requirements) and appose"
"${PIP[@]}" install -c constraints.txt -r requirements-cellprofiler.txt appose
"${PIP[@]}" install -c constraints.txt --no-deps "cellprofiler-nightly==5.0.0.dev784"

"$PY" -c "import wx, Ice, omero, cellprofiler.gui.plugins_menu, cellprofiler_omero.cp_integration"
echo "$digest" > "$stamp"
say "ready: $VENV_GUI"

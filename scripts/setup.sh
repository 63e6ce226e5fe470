#!/usr/bin/env bash
# Create or update .venv with everything the demo and the tests need.
# Idempotent: a second run reuses the venv and the cached zeroc-ice wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
# Some machines list package folders that do not exist; pip warns about each, every time.
pip_install() { "${PIP[@]}" install "$@" 2> >(grep -v "^WARNING: Location '" >&2); }

# zeroc-ice 3.6.5 first: omero-py needs it and PyPI has no wheel for Python 3.11.
if ! "$PY" -c "import Ice, sys; sys.exit(Ice.stringVersion() != '3.6.5')" 2>/dev/null; then
  wheel=$("$PY" scripts/zeroc_ice_wheel.py)
  echo "[setup] installing $wheel"
  pip_install --no-deps "$wheel"
fi

echo "[setup] installing cellprofiler-omero (editable) with CellProfiler 5, test tools and OMERO.web"
pip_install -c constraints.txt -e ".[cellprofiler,test,bench,web]"

# CellProfiler's processing modules and command line. cellprofiler-nightly hard-requires
# wxPython (no Linux wheel on PyPI) and mysqlclient (needs MySQL headers; only for
# ExportToDatabase with MySQL), so it is installed without dependencies and its other
# requirements are listed in requirements-cellprofiler.txt.
pip_install -c constraints.txt -r requirements-cellprofiler.txt
pip_install -c constraints.txt --no-deps "cellprofiler-nightly==5.0.0.dev784"

touch "$VENV/.setup-done"
echo "[setup] ready: $VENV"

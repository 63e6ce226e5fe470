#!/usr/bin/env bash
# mypy over the package. The top-level folders map into cellprofiler_omero.* only at
# install time, which mypy cannot see, so it reads a symlinked view of the same files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
view=build/typecheck/cellprofiler_omero
rm -rf build/typecheck
mkdir -p "$view"
for f in __init__.py __main__.py cli.py py.typed; do
  [ -e "$f" ] && ln -s "../../../$f" "$view/$f"
done
for d in core transports emulator cp_integration benchmarks; do
  ln -s "../../../$d" "$view/$d"
done
MYPYPATH=build/typecheck "$VENV/bin/mypy" --cache-dir build/mypy-cache -p cellprofiler_omero

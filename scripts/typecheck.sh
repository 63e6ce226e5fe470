#!/usr/bin/env bash
# mypy over the package. The top-level folders map into cellprofiler_omero.* only at
# install time, which mypy cannot see, so it reads a symlinked view of the same files
# (made in a private temporary folder, so concurrent runs do not collide).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
VENV=${VENV:-.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
view="$work/cellprofiler_omero"
mkdir -p "$view"
for f in __init__.py __main__.py cli.py api.py plugin.py py.typed; do
  [ -e "$f" ] && ln -s "$root/$f" "$view/$f"
done
for d in core transports emulator cp_integration benchmarks commands; do
  ln -s "$root/$d" "$view/$d"
done
cd "$work"
MYPYPATH="$work" "$root/$VENV/bin/mypy" --config-file "$root/pyproject.toml" \
  --cache-dir "${MYPY_CACHE_DIR:-$work/.mypy_cache}" -p cellprofiler_omero \
  | sed "s#^$work/##"
exit "${PIPESTATUS[0]}"

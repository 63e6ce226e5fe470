"""Find or build a zeroc-ice 3.6.5 wheel for the running Python, and print its path.

omero-py needs ``zeroc-ice>=3.6.5,<3.7``. PyPI has 3.6.5 only as a source archive
that does not compile on Python 3.11 without two one-line fixes, and the build
takes minutes. So, in this order:

1. ``$ZEROC_ICE_WHEEL``: a wheel file you supply (e.g. from Glencoe Software);
2. a matching wheel in ``$ZEROC_ICE_WHEEL_DIR`` (default
   ``${XDG_CACHE_HOME:-~/.cache}/cellprofiler-omero/wheels``);
3. otherwise download the source archive from the package index, patch it, build
   the wheel once into that folder, and reuse it from then on.

Prints the wheel path on stdout; progress goes to stderr.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.6.5"


def cache_dir() -> Path:
    explicit = os.environ.get("ZEROC_ICE_WHEEL_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cellprofiler-omero" / "wheels"


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def find_cached(folder: Path) -> Path | None:
    pattern = str(folder / f"zeroc_ice-{VERSION}-{python_tag()}-*.whl")
    hits = sorted(glob.glob(pattern))
    return Path(hits[-1]) if hits else None


def log(msg: str) -> None:
    print(f"[zeroc-ice] {msg}", file=sys.stderr, flush=True)


def patch_sources(src: Path) -> None:
    """Apply the two Python 3.11 fixes (see FACTS.md)."""
    slice_cpp = src / "src" / "Slice.cpp"
    text = slice_cpp.read_text()
    text = text.replace("#include <eval.h>", "")
    slice_cpp.write_text(text)
    util_cpp = src / "src" / "Util.cpp"
    text = util_cpp.read_text()
    text = text.replace("PyThreadState_GET()->frame", "PyEval_GetFrame()")
    util_cpp.write_text(text)


def build(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zeroc-ice-build-") as tmp:
        work = Path(tmp)
        log(f"downloading zeroc-ice=={VERSION} source from the package index")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"zeroc-ice=={VERSION}", "-d", str(work)],
            check=True, stdout=sys.stderr,
        )
        archive = next(work.glob("zeroc-ice-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        src = work / f"zeroc-ice-{VERSION}"
        patch_sources(src)
        log("building the wheel (about 4 minutes on 2 cores; done once, then cached)")
        env = dict(os.environ)
        env.setdefault("MAKEFLAGS", f"-j{os.cpu_count() or 2}")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "dist"), str(src)],
            check=True, stdout=sys.stderr, env=env,
        )
        built = next((work / "dist").glob("zeroc_ice-*.whl"))
        target = folder / built.name
        # Write under a temporary name then rename, so a parallel reader never sees half a wheel.
        partial = folder / (built.name + ".partial")
        partial.write_bytes(built.read_bytes())
        partial.replace(target)
        log(f"cached {target}")
        return target


def main() -> int:
    supplied = os.environ.get("ZEROC_ICE_WHEEL")
    if supplied:
        path = Path(supplied).expanduser()
        if not path.is_file():
            log(f"ZEROC_ICE_WHEEL={supplied} is not a file; unset it or point it at a wheel")
            return 2
        print(path)
        return 0
    folder = cache_dir()
    cached = find_cached(folder)
    if cached is None:
        cached = build(folder)
    else:
        log(f"using cached wheel {cached}")
    print(cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the figures were measured on: CPU, memory, Python, the packages that matter."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

#: Reported name → distribution names to try, first found wins (CellProfiler 5 ships as
#: nightly builds under other names).
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "omero-py": ("omero-py",),
    "zeroc-ice": ("zeroc-ice",),
    "cellprofiler-core": ("cellprofiler-core", "cellprofiler-core-nightly"),
    "cellprofiler": ("cellprofiler", "cellprofiler-nightly"),
    "cellprofiler-omero": ("cellprofiler-omero",),
}


def package_versions() -> dict[str, str | None]:
    """Installed versions (``None``: not installed)."""
    out: dict[str, str | None] = {}
    for name, candidates in PACKAGES.items():
        out[name] = None
        for dist in candidates:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it (Linux), else the platform's guess."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """The machine description stored with every result."""
    memory = None
    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
    except ImportError:  # the bench extra is missing; the figures still stand
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "packages": package_versions(),
    }

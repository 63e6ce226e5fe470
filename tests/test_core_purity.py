"""The core knows no transport and no CellProfiler: dependencies point inward."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = ["config", "errors", "hookspecs", "model", "refs", "registry", "roles",
                "runtime", "session", "tokens"]
FORBIDDEN = ["omero", "Ice", "Glacier2", "requests", "cellprofiler_core", "cellprofiler",
             "cellprofiler_omero.transports", "cellprofiler_omero.cp_integration",
             "cellprofiler_omero.emulator"]


def test_core_imports_no_transport_library_and_no_cellprofiler() -> None:
    code = (
        "import sys\n"
        + "".join(f"import cellprofiler_omero.core.{m}\n" for m in CORE_MODULES)
        + "from cellprofiler_omero.core.registry import Registry\n"
        + "from cellprofiler_omero.core.config import Settings\n"
        + "Registry(Settings(), load_entry_points=False)\n"
        + f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""

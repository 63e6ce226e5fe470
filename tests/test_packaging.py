"""The project installs as a wheel, not only as an editable checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_one_namespace_with_every_subpackage(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("cellprofiler_omero-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("cellprofiler_omero/__init__.py", "cellprofiler_omero/cli.py",
                   "cellprofiler_omero/core/refs.py", "cellprofiler_omero/transports/ice/plugin.py",
                   "cellprofiler_omero/transports/pixelbuffer/plugin.py",
                   "cellprofiler_omero/emulator/services/query.py",
                   "cellprofiler_omero/cp_integration/plugins/omeroreader.py",
                   "cellprofiler_omero/cp_integration/gui/launcher.py",
                   "cellprofiler_omero/commands/__init__.py",
                   "cellprofiler_omero/benchmarks/__init__.py"):
        assert module in names, module
    assert not any(n.startswith("cellprofiler_omero/tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cellprofiler-omero = cellprofiler_omero.cli:main" in text
    assert "ice = cellprofiler_omero.transports.ice.plugin" in text


def test_installed_wheel_imports_and_runs_without_the_checkout(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    wheel = next((tmp_path / "dist").glob("cellprofiler_omero-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300, capture_output=True)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import cellprofiler_omero, cellprofiler_omero.core.refs as refs\n"
        "from cellprofiler_omero.cp_integration import plugins_dir\n"
        "from cellprofiler_omero.cli import main\n"
        "assert cellprofiler_omero.__file__.startswith(sys.argv[1]), cellprofiler_omero.__file__\n"
        "assert str(plugins_dir()).startswith(sys.argv[1])\n"
        "print(refs.parse_one('omero:iid=5'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(target)], check=True,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.strip() == "Image:5"

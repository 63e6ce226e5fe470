"""`cellprofiler-omero urls --loaddata` output, loaded by CellProfiler's LoadData headless."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.cp_integration import plugins_dir
from cellprofiler_omero.emulator import Emulator

pytestmark = [pytest.mark.cellprofiler, pytest.mark.slow]


def loaddata_pipeline(csv_path: Path) -> str:
    from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
    from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects
    from cellprofiler_core.modules.loaddata import LoadData
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    load = LoadData()
    load.set_module_num(1)
    load.csv_directory.value = f"Elsewhere...|{csv_path.parent}"
    load.csv_file_name.value = csv_path.name
    pipeline.add_module(load)
    identify = IdentifyPrimaryObjects()
    identify.set_module_num(2)
    identify.x_name.value = "DAPI"
    identify.y_name.value = "Nuclei"
    pipeline.add_module(identify)
    export = ExportToSpreadsheet()
    export.set_module_num(3)
    pipeline.add_module(export)
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()


def test_loaddata_csv_drives_a_headless_run(manager: SessionManager, emulator: Emulator,
                                            seeded: dict[str, Any], tmp_path: Path,
                                            cellprofiler_plugins: None) -> None:
    env = {**os.environ, **manager.export_for_workers(), "HOME": str(tmp_path),
           "OMERO_USER_TOKEN_DIR": str(tmp_path / "tokens"),
           "CELLPROFILER_OMERO_SERVER_HOST": emulator.host,
           "CELLPROFILER_OMERO_SERVER_PORT": str(emulator.port)}
    csv_path = tmp_path / "plate.csv"
    subprocess.run([sys.executable, "-m", "cellprofiler_omero", "urls", f"Plate:{seeded['plate']}",
                    "--loaddata", "-o", str(csv_path)], env=env, check=True, timeout=120,
                   capture_output=True)
    with csv_path.open() as handle:
        plate_rows = list(csv.DictReader(handle))
    assert len(plate_rows) == 12 and "URL_DAPI" in plate_rows[0]
    (tmp_path / "loaddata.cppipe").write_text(loaddata_pipeline(csv_path))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p",
         str(tmp_path / "loaddata.cppipe"), "-o", str(out), "--plugins-directory",
         str(plugins_dir())], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (out / "MyExpt_Image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    wells = sorted({(r["Metadata_Well"], r["Metadata_Field"]) for r in rows})
    assert wells[:3] == [("A01", "1"), ("A01", "2"), ("A02", "1")]
    assert all(int(float(r["Count_Nuclei"])) >= 0 for r in rows)
    assert {r["URL_DAPI"] for r in rows} == {r["URL_DAPI"] for r in plate_rows}

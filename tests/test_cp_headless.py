"""Real CellProfiler runs (headless, in child processes) against the emulator."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.cp_integration import plugins_dir
from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import Leftovers, Target, run

pytestmark = [pytest.mark.cellprofiler, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cp_env(manager: SessionManager, emulator: Emulator, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a CellProfiler child process: the session handed over, nothing else."""
    handoff = manager.export_for_workers()
    home = tmp_path / "home"
    home.mkdir()
    yield {**os.environ, **handoff, "HOME": str(home),
           "OMERO_USER_TOKEN_DIR": str(tmp_path / "no-tokens"),
           "CELLPROFILER_OMERO_SERVER_HOST": emulator.host,
           "CELLPROFILER_OMERO_SERVER_PORT": str(emulator.port)}


def run_cellprofiler(pipeline: str, urls: list[str], out: Path, env: dict[str, str]
                     ) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.cppipe").write_text(pipeline)
    (out / "files.txt").write_text("\n".join(urls) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p", str(out / "pipeline.cppipe"),
         "--file-list", str(out / "files.txt"), "-o", str(out), "--plugins-directory",
         str(plugins_dir()), "-L", "INFO"], env=env, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def local_pipeline(dataset: int | None, **kw: Any) -> str:
    from tests.cp_pipelines import with_local_copies

    return with_local_copies(nuclei_pipeline(dataset, **kw))


def test_every_image_link_form_is_read(cp_env: dict[str, str], cellprofiler_plugins: None,
                                       seeded: dict[str, Any], tmp_path: Path) -> None:
    f0, f1, f2 = seeded["fields"]
    well_image = seeded["wells"]["A01"] + 1
    urls = [f"omero:iid={f0}", f"http://127.0.0.1/webclient/?show=image-{f1}",
            f"https://127.0.0.1/webclient/img_detail/{f2}/",
            f"https://127.0.0.1/iviewer/?images={well_image}"]
    pipeline = local_pipeline(None, save_labels=False, export_tables=False)
    run_cellprofiler(pipeline, urls, tmp_path / "out", cp_env)
    rows = read_csv(tmp_path / "out" / "MyExpt_Image.csv")
    assert len(rows) == 4
    assert all(int(float(r["Count_Nuclei"])) > 0 for r in rows)
    assert {r["URL_DNA"] for r in rows} == {u.rstrip("/") for u in urls}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, target: Target,
             cellprofiler_plugins: None) -> Iterator[dict[str, Any]]:
    """One run of the full demo pipeline (plus local copies) over three fields uploaded to
    the target's dataset, saving its labels and tables there too; on a real server
    everything it made is deleted afterwards."""
    from cellprofiler_omero.core.uploading import upload

    tmp = tmp_path_factory.mktemp("full")
    mgr = SessionManager(target.settings(tmp / "tokens", auth__use_token=False))
    leftovers = Leftovers()
    mgr.registry.register(leftovers, "test-leftovers")
    run(lambda: mgr.connect(user=target.user, password=target.password))
    images_before, annotations_before = target.dataset_contents()
    sources = []
    for index in range(3):
        pixels, _ = synthetic.nuclei_and_cells(1000 + index, 512)
        sources.append(run(lambda p=pixels, i=index: upload(
            mgr, p, name=f"e2e field {i}", axes="CYX", dataset_id=target.dataset_id,
            channel_names=["DAPI", "Cytoplasm"])).id)
    env = target.child_environment(**mgr.export_for_workers(), HOME=str(tmp))
    urls = [f"omero:iid={i}" for i in sources]
    try:
        log = run_cellprofiler(local_pipeline(target.dataset_id), urls, tmp / "out", env)
        # The CellProfiler process's tables, told apart from older ones of the same name.
        tables = target.dataset_contents()[1] - annotations_before
        yield {"mgr": mgr, "env": env, "dataset": target.dataset_id, "out": tmp / "out",
               "log": log, "urls": urls, "tmp": tmp, "tables": tables}
    finally:
        images, annotations = target.dataset_contents()
        leftovers.add("Image", images - images_before)
        leftovers.add("Annotation", annotations - annotations_before)
        run(mgr.close)
        leftovers.delete(target)


@pytest.mark.real_server
def test_saved_labels_match_cellprofilers_own_pixel_for_pixel(full_run: dict[str, Any]
                                                              ) -> None:
    rows = read_csv(full_run["out"] / "MyExpt_Image.csv")
    assert len(rows) == 3
    for row in rows:
        local = np.load(full_run["out"] / f"{row['FileName_DNA']}_labels.npy")
        image_id = int(float(row["OMERO_ImageID_Nuclei"]))
        reader = ImageReader(full_run["mgr"], parse_image(f"Image:{image_id}"))
        remote = run(lambda r=reader: r.read())[0, 0]
        run(reader.aclose)
        np.testing.assert_array_equal(remote.astype(np.int64), local.astype(np.int64))
        assert row["OMERO_URL_Nuclei"].endswith(f"show=image-{image_id}")


@pytest.mark.real_server
def test_tables_match_cellprofilers_measurements(full_run: dict[str, Any],
                                                 target: Target) -> None:
    import omero2pandas

    conn = target.blitz()
    try:
        dataset = conn.getObject("Dataset", full_run["dataset"])
        made = [a for a in dataset.listAnnotations()
                if a.getId() in full_run["tables"] and a.getFile() is not None]
        # Named <prefix>_<label>_run-<run key>: looked up by what comes before the run.
        namespaces = {a.getFile().getName().rsplit("_run-", 1)[0]: a.getNs() for a in made}
        tables = {a.getFile().getName().rsplit("_run-", 1)[0]: a.getFile().getId()
                  for a in made}
        # Tables with an Image column show beside images in OMERO.web (bulk annotations).
        bulk = "openmicroscopy.org/omero/bulk_annotations"
        assert namespaces["CellProfiler_Image"] == namespaces["CellProfiler_Nuclei"] == bulk
        assert namespaces["CellProfiler_Relationships"] == \
            "openmicroscopy.org/cellprofiler-omero/measurements"
        nuclei = omero2pandas.read_table(file_id=tables["CellProfiler_Nuclei"],
                                         omero_connector=conn)
        images = omero2pandas.read_table(file_id=tables["CellProfiler_Image"],
                                         omero_connector=conn)
    finally:
        conn.close()
    cp_nuclei = read_csv(full_run["out"] / "MyExpt_Nuclei.csv")
    cp_images = read_csv(full_run["out"] / "MyExpt_Image.csv")
    assert len(nuclei) == len(cp_nuclei)
    ours = {(int(r.ImageNumber), int(r.ObjectNumber)): r.AreaShape_Area
            for r in nuclei.itertuples()}
    theirs = {(int(r["ImageNumber"]), int(r["ObjectNumber"])): float(r["AreaShape_Area"])
              for r in cp_nuclei}
    assert ours == pytest.approx(theirs)
    assert sorted(images["ImageNumber"]) == [1, 2, 3]
    by_number = {int(r["ImageNumber"]): r for r in cp_images}
    for row in images.itertuples():
        expected = by_number[int(row.ImageNumber)]
        assert row.Count_Nuclei == float(expected["Count_Nuclei"])
        assert row.Mean_Nuclei_AreaShape_Area == pytest.approx(
            float(expected["Mean_Nuclei_AreaShape_Area"]))
        assert row.Image == int(expected["URL_DNA"].split("=")[-1])


@pytest.mark.real_server
def test_a_rerun_finds_the_images_it_already_saved(full_run: dict[str, Any]) -> None:
    first = {r["FileName_DNA"]: r["OMERO_ImageID_Nuclei"]
             for r in read_csv(full_run["out"] / "MyExpt_Image.csv")}
    log = run_cellprofiler(local_pipeline(full_run["dataset"]), full_run["urls"],
                           full_run["tmp"] / "rerun", full_run["env"])
    again = {r["FileName_DNA"]: r["OMERO_ImageID_Nuclei"]
             for r in read_csv(full_run["tmp"] / "rerun" / "MyExpt_Image.csv")}
    assert again == first
    assert "found image" in log


def test_two_analysis_workers_write_one_consistent_table(cp_env: dict[str, str],
                                                         cellprofiler_plugins: None,
                                                         scratch_dataset: int,
                                                         emulator: Emulator,
                                                         seeded: dict[str, Any],
                                                         tmp_path: Path) -> None:
    import omero2pandas
    from omero.gateway import BlitzGateway

    out = tmp_path / "workers"
    out.mkdir()
    pipeline = nuclei_pipeline(scratch_dataset, save_labels=True, table_prefix="Workers")
    (out / "pipeline.cppipe").write_text(pipeline)
    plate = [f"omero:iid={seeded['wells'][w] + 1 + 2 * k}" for w in ("A01", "A02", "B01")
             for k in (0, 1)]
    (out / "files.txt").write_text("\n".join(plate) + "\n")
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "run_with_workers.py"),
                             str(out / "pipeline.cppipe"), str(out / "files.txt"), str(out),
                             "2"], env=cp_env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "finished: 6 image sets" in result.stdout
    conn = BlitzGateway("demo", "demo", host=emulator.host, port=emulator.port)
    assert conn.connect()
    try:
        dataset = conn.getObject("Dataset", scratch_dataset)
        files = {a.getFile().getName().rsplit("_run-", 1)[0]: a.getFile().getId()
                 for a in dataset.listAnnotations()
                 if a.getFile() is not None and a.getFile().getName().startswith("Workers_")}
        nuclei = omero2pandas.read_table(file_id=files["Workers_Nuclei"], omero_connector=conn)
        images = omero2pandas.read_table(file_id=files["Workers_Image"], omero_connector=conn)
    finally:
        conn.close()
    assert sorted(images["ImageNumber"]) == [1, 2, 3, 4, 5, 6]
    keys = list(zip(nuclei["ImageNumber"], nuclei["ObjectNumber"], strict=True))
    assert len(keys) == len(set(keys))
    assert len(keys) == int(images["Count_Nuclei"].sum())

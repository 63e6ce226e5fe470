"""CellProfiler objects go to OMERO as ROIs: one per object, exactly once, read back as
OMERO's own clients read them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import CannotAnnotate, NotFound, PermissionDenied
from cellprofiler_omero.core.roi_encoding import (
    LabelsLargerThanImage,
    check_fits,
    iter_objects,
    label_rois,
    pack_mask,
    parse_color,
    rgba_to_int,
    unpack_mask,
)
from cellprofiler_omero.core.roi_writing import estimated_bytes, plan_batches, save_rois
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.shapes import MaskShape, Plane, PolygonShape, ShapeKind
from cellprofiler_omero.emulator import Emulator, SeedOptions
from tests.conftest import run


def grid_labels(rows: int, columns: int, cell: int = 12, seed: int = 0) -> np.ndarray:
    """``rows × columns`` objects of random sizes (some split in two, some with holes)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((rows * cell, columns * cell), np.int32)
    number = 0
    for r in range(rows):
        for c in range(columns):
            number += 1
            h, w = rng.integers(2, cell - 1, size=2)
            y, x = r * cell + 1, c * cell + 1
            labels[y:y + h, x:x + w] = number
            if number % 7 == 0 and h > 4 and w > 4:
                labels[y + h // 2, x + w // 2] = 0  # a hole
            if number % 11 == 0 and w > 5:
                labels[y:y + h, x + 2] = 0  # split in two parts
    return labels


def from_masks(rois: dict[int, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The label image the Mask shapes describe (object number = the key of ``rois``)."""
    out = np.zeros(shape, np.int32)
    for number, roi in rois.items():
        for mask in roi.shapes:
            assert isinstance(mask, MaskShape)
            box = out[mask.y:mask.y + mask.height, mask.x:mask.x + mask.width]
            assert not np.any(box[mask.mask]), "objects overlap"
            box[mask.mask] = number
    return out


# -- the pure encoding ---------------------------------------------------------------------


def test_masks_reassemble_the_label_image_pixel_for_pixel() -> None:
    labels = grid_labels(12, 15)
    labels[labels == 5] = 0  # a missing number makes no ROI
    rois = label_rois(labels, 7, "Nuclei")
    assert list(rois) == [n for n in range(1, 12 * 15 + 1) if n != 5]
    assert np.array_equal(from_masks(rois, labels.shape), labels)
    roi = rois[3]
    assert roi.name == "Nuclei 3" and roi.image_id == 7
    assert roi.shapes[0].style.text == "Nuclei 3"
    assert roi.key is not None and len({r.key for r in rois.values()}) == len(rois)


def test_mask_bytes_are_what_omero_rois_makes() -> None:
    from omero_rois import mask_from_binary_image

    labels = grid_labels(4, 4, seed=3)
    for number, roi in label_rois(labels, 1, "Cells").items():
        theirs = mask_from_binary_image(labels == number)
        mask = roi.shapes[0]
        assert isinstance(mask, MaskShape)
        assert pack_mask(mask.mask) == bytes(theirs.getBytes())
        assert (mask.x, mask.y, mask.width, mask.height) == (
            theirs.getX().getValue(), theirs.getY().getValue(),
            theirs.getWidth().getValue(), theirs.getHeight().getValue())
        assert np.array_equal(unpack_mask(pack_mask(mask.mask), mask.width, mask.height),
                              mask.mask)


def test_polygons_outline_the_largest_part_within_the_tolerance() -> None:
    """Drawn back by OMERO's pixel rule (pixel (i, j) spans [i, i + 1), the reader's
    rasteriser), the outline covers exactly the object's pixels."""
    from cellprofiler_omero.core.rasterise import polygon as fill

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:25] = 1  # a rectangle
    labels[20:35, 10:30] = 2
    labels[20:35, 18] = 0  # split: the larger part (x 19–29) is outlined
    rois = label_rois(labels, 1, "Nuclei", kind=ShapeKind.POLYGON, tolerance=0.5)
    for number, expected in ((1, labels == 1), (2, (labels == 2) & (np.arange(40) > 18))):
        shape = rois[number].shapes[0]
        assert isinstance(shape, PolygonShape)
        drawn = np.zeros_like(expected)
        raster = fill(shape.points, *drawn.shape)
        drawn[raster.rows, raster.cols] = True
        assert np.array_equal(drawn, expected)
    assert len(rois[1].shapes[0].points) == 4  # simplified to its corners


def test_a_polygon_outline_follows_pixel_edges_so_it_covers_the_object_exactly() -> None:
    """Unsimplified (tolerance 0), the outline of any 4-connected object — a disc, a
    concave T, one pixel — drawn back by OMERO's rule gives the object's pixels; a
    rectangle is its four corners, and no tolerance reduces a pixel to a point."""
    from skimage.draw import disk

    from cellprofiler_omero.core.rasterise import polygon as fill

    labels = np.zeros((40, 40), np.int32)
    labels[disk((12, 12), 9)] = 1
    labels[25:35, 5:9] = 2
    labels[29:32, 9:15] = 2
    labels[36, 36] = 3
    labels[2:6, 25:37] = 4
    for tolerance in (0.0, 5.0):
        rois = label_rois(labels, 1, "Nuclei", kind=ShapeKind.POLYGON, tolerance=tolerance)
        for number in (1, 2, 3, 4):
            shape = rois[number].shapes[0]
            assert isinstance(shape, PolygonShape)
            assert len(shape.points) >= 3
            if tolerance == 0.0:
                raster = fill(shape.points, *labels.shape)
                drawn = np.zeros(labels.shape, bool)
                drawn[raster.rows, raster.cols] = True
                assert np.array_equal(drawn, labels == number), number
    exact = label_rois(labels, 1, "Nuclei", kind=ShapeKind.POLYGON, tolerance=0.0)
    assert sorted(exact[4].shapes[0].points) == [(25.0, 2.0), (25.0, 6.0), (37.0, 2.0),
                                                 (37.0, 6.0)]


def test_volumes_give_one_shape_per_plane_on_that_plane() -> None:
    labels = np.zeros((3, 10, 10), np.uint16)
    labels[0, 1:3, 1:3] = 1
    labels[2, 4:8, 4:6] = 1
    labels[1, 5, 5] = 2
    rois = label_rois(labels, 9, "Nuclei", plane=Plane(z=None, t=2))
    assert [s.plane for s in rois[1].shapes] == [Plane(0, 2), Plane(2, 2)]
    assert [s.plane for s in rois[2].shapes] == [Plane(1, 2)]


def test_keys_change_with_the_object_and_stay_for_the_same_object() -> None:
    labels = grid_labels(3, 3)
    first = label_rois(labels, 1, "Nuclei")
    again = label_rois(labels.copy(), 1, "Nuclei")
    assert [r.key for r in first.values()] == [r.key for r in again.values()]
    changed = labels.copy()
    changed[changed == 2] = 0
    changed[1, 13] = 2
    moved = label_rois(changed, 1, "Nuclei")
    assert moved[2].key != first[2].key and moved[1].key == first[1].key
    assert label_rois(labels, 2, "Nuclei")[1].key != first[1].key
    assert label_rois(labels, 1, "Cells")[1].key != first[1].key


def test_labels_larger_than_the_image_are_refused_naming_both_sizes() -> None:
    with pytest.raises(LabelsLargerThanImage) as caught:
        label_rois(np.ones((20, 30), np.uint8), 4, "Nuclei", image_size=(25, 20, 1))
    assert caught.value.labels_size == (30, 20)
    assert caught.value.image_size == (25, 20)
    assert caught.value.image_id == 4
    assert "30×20" in caught.value.message and "25×20" in caught.value.message
    with pytest.raises(LabelsLargerThanImage):
        check_fits((3, 10, 10), 10, 10, 2)
    check_fits((2, 10, 10), 10, 10, 2)


def test_ten_thousand_objects_encode_in_one_pass_into_few_batches() -> None:
    labels = grid_labels(100, 100, cell=10)
    objects = list(iter_objects(labels))
    assert len(objects) == 10_000
    rois = list(label_rois(labels, 1, "Nuclei").values())
    batches = plan_batches(rois, 8 * 1024 * 1024, rois_per_call=1000)
    assert [len(b) for b in batches] == [1000] * 10
    small = plan_batches(rois, 64 * 1024)
    assert all(sum(estimated_bytes(r) for r in b) <= 64 * 1024 for b in small)
    assert [r for b in small for r in b] == rois


def test_colours_are_omeros_signed_rgba() -> None:
    assert rgba_to_int(255, 0, 0) == -16776961  # what OMERO.web stores for opaque red
    assert parse_color("#00FF00") == 0x00FF00FF
    with pytest.raises(ValueError):
        parse_color("green")


# -- against a server ------------------------------------------------------------------------
#
# One emulator for this module: its ``shared`` group is made read-only (a real OMERO group
# setting, "rwr---"), so ``other`` sees demo's shared image but may not annotate it.

SMALL_SEED = dict(seed=5, fields=1, field_size=64, large_size=128, plate_rows=1,
                  plate_columns=1, plate_fields=1, plate_field_size=32)


@pytest.fixture(scope="module")
def roi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    import sqlite3

    emu = Emulator(tmp_path_factory.mktemp("roi-server"), seed_options=SeedOptions(**SMALL_SEED))
    with emu:
        # What `omero group perms --perms rwr---` does on a real server; the emulator
        # reads its groups from its database on every permission check.
        db = sqlite3.connect(str(emu.data_dir / "omero.sqlite"), timeout=30)
        with db:
            db.execute("UPDATE groups SET perms = 'rwr---' WHERE name = 'shared'")
        db.close()
        yield emu


def _manager(server: Emulator, tmp: Path, user: str = "demo") -> SessionManager:
    settings = Settings().replace({
        "server.host": server.host, "server.port": server.port, "auth.use_token": False,
        "auth.token_dir": str(tmp / "tokens"), "auth.keepalive_seconds": 3600,
        "retry.initial_delay_seconds": 0.05})
    mgr = SessionManager(settings)
    run(lambda: mgr.connect(user=user, password=user))
    return mgr


@pytest.fixture(scope="module")
def demo_manager(roi_server: Emulator, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[SessionManager]:
    mgr = _manager(roi_server, tmp_path_factory.mktemp("demo"))
    yield mgr
    run(mgr.close)


def _image(mgr: SessionManager, size: int, name: str = "rois") -> int:
    from cellprofiler_omero.core.uploading import upload

    return int(run(lambda: upload(mgr, np.zeros((size, size), np.uint8), name=name)).id)


def _server_rois(server: Emulator, image_id: int) -> list[Any]:
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=server.host, port=server.port)
    assert conn.connect()
    try:
        return list(conn.getRoiService().findByImage(image_id, None).rois)
    finally:
        conn.close()


def _calls(server: Emulator, mgr: SessionManager, operation: str) -> int:
    key = run(mgr.connection).session_key
    return int(server.call_counts(key).get(operation, 0))


def _run_cellprofiler(mgr: SessionManager, pipeline: str, urls: list[str]) -> Any:
    """Run ``pipeline`` headless in this process (CellProfiler's own ``Pipeline.run``),
    without the demo's measurement modules (slow, and not what is tested here)."""
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.core import session as core_session
    from cellprofiler_omero.cp_integration import compat

    compat.install()
    core_session.set_manager(mgr)
    try:
        cp = Pipeline()
        cp.loadtxt(io.StringIO(pipeline), raise_on_error=True)
        for module in list(cp.modules()):
            if module.module_name.startswith("MeasureObject"):
                cp.remove_module(module.module_num)
        cp.add_urls(urls)
        return cp.run()
    finally:
        core_session.set_manager(None)


@pytest.fixture(scope="module")
def cp_run(roi_server: Emulator, demo_manager: SessionManager, cellprofiler_plugins: None
           ) -> dict[str, Any]:
    """The demo pipeline, saving the nuclei as ROIs (and as label images, CellProfiler's
    labels to compare with), over two OMERO images, run twice."""
    import omero.model
    from omero.gateway import BlitzGateway
    from omero.rtypes import rstring

    from cellprofiler_omero.core.uploading import upload
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline
    from cellprofiler_omero.emulator import synthetic

    conn = BlitzGateway("demo", "demo", host=roi_server.host, port=roi_server.port)
    assert conn.connect()
    ds = omero.model.DatasetI()
    ds.setName(rstring("rois out"))
    dataset = int(conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())
    conn.close()
    sources = []
    for index in range(2):
        pixels, _ = synthetic.nuclei_and_cells(2000 + index, 256)
        sources.append(run(lambda p=pixels, i=index: upload(
            demo_manager, p, name=f"rois field {i}", axes="CYX", dataset_id=dataset,
            channel_names=["DAPI", "Cytoplasm"])).id)
    pipeline = nuclei_pipeline(dataset, save_rois=True, table_prefix="RoisOut")
    urls = [f"omero:iid={i}" for i in sources]
    first = _run_cellprofiler(demo_manager, pipeline, urls)
    rois_before = {i: len(_server_rois(roi_server, i)) for i in sources}
    roi_calls = _calls(roi_server, demo_manager, "IUpdate.saveAndReturnIds")
    second = _run_cellprofiler(demo_manager, pipeline, urls)
    return {"sources": sources, "first": first, "second": second, "dataset": dataset,
            "rois_before": rois_before, "roi_calls": roi_calls,
            "roi_calls_after": _calls(roi_server, demo_manager, "IUpdate.saveAndReturnIds")}


def _labels_of(server: Emulator, image_id: int) -> np.ndarray:
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=server.host, port=server.port)
    assert conn.connect()
    try:
        return np.asarray(conn.getObject("Image", image_id).getPrimaryPixels().getPlane(0, 0, 0))
    finally:
        conn.close()


@pytest.mark.cellprofiler
def test_each_object_is_one_roi_on_its_source_image_equal_to_cellprofilers_labels(
        roi_server: Emulator, cp_run: dict[str, Any]) -> None:
    from omero_rois import masks_to_labels

    m = cp_run["first"]
    for image_number, source in enumerate(cp_run["sources"], start=1):
        roi_ids = np.asarray(m.get_measurement("Nuclei", "OMERO_RoiID", image_number))
        count = int(m.get_measurement("Image", "Count_Nuclei", image_number))
        assert count > 0 and len(roi_ids) == count and np.all(roi_ids > 0)
        rois = _server_rois(roi_server, source)
        assert sorted(int(r.getId().getValue()) for r in rois) == sorted(roi_ids.tolist())
        assert {r.getName().getValue() for r in rois} == {
            f"Nuclei {n}" for n in range(1, count + 1)}
        # CellProfiler's labels, as SaveImagesToOMERO saved them beside the ROIs.
        labels = _labels_of(roi_server, int(m.get_measurement(
            "Image", "OMERO_ImageID_Nuclei", image_number)))
        shapes = [s for r in rois for s in r.copyShapes()]
        read, _, props = masks_to_labels(shapes, (1, 1, 1, *labels.shape))
        by_roi = {p["omero:roiId"]: value for value, p in props.items()}
        expected = np.zeros_like(read[0, 0, 0])
        for number, roi_id in enumerate(roi_ids.tolist(), start=1):
            expected[labels == number] = by_roi[roi_id]
        assert np.array_equal(read[0, 0, 0], expected)


@pytest.mark.cellprofiler
def test_the_object_table_has_a_roi_column_pointing_at_the_rois(
        roi_server: Emulator, cp_run: dict[str, Any]) -> None:
    import omero.grid
    import omero.model
    from omero.gateway import BlitzGateway
    from omero.rtypes import rlong

    m = cp_run["first"]
    file_id = int(m.get_experiment_measurement("OMERO_TableFile_Nuclei"))
    conn = BlitzGateway("demo", "demo", host=roi_server.host, port=roi_server.port)
    assert conn.connect()
    try:
        table = conn.c.sf.sharedResources().openTable(omero.model.OriginalFileI(rlong(file_id),
                                                                               False))
        try:
            headers = table.getHeaders()
            names = [h.name for h in headers]
            assert names[:4] == ["ImageNumber", "ObjectNumber", "Image", "Roi"]
            assert isinstance(headers[3], omero.grid.RoiColumn)
            data = table.readCoordinates(list(range(table.getNumberOfRows())))
            rows = list(zip(*(c.values for c in data.columns[:4]), strict=True))
        finally:
            table.close()
    finally:
        conn.close()
    expected = []
    for image_number, source in enumerate(cp_run["sources"], start=1):
        ids = m.get_measurement("Nuclei", "OMERO_RoiID", image_number)
        expected += [(image_number, n, source, int(i)) for n, i in enumerate(ids, start=1)]
    assert sorted(rows) == expected


@pytest.mark.cellprofiler
def test_a_rerun_finds_every_roi_and_makes_none(roi_server: Emulator,
                                                cp_run: dict[str, Any]) -> None:
    first, second = cp_run["first"], cp_run["second"]
    for image_number, source in enumerate(cp_run["sources"], start=1):
        assert np.array_equal(first.get_measurement("Nuclei", "OMERO_RoiID", image_number),
                              second.get_measurement("Nuclei", "OMERO_RoiID", image_number))
        assert len(_server_rois(roi_server, source)) == cp_run["rois_before"][source]
    assert cp_run["roi_calls"] >= 2  # one batch per image the first time
    assert cp_run["roi_calls_after"] == cp_run["roi_calls"]  # nothing sent the second


def test_a_batch_whose_reply_was_lost_is_retried_without_duplicates(
        roi_server: Emulator, demo_manager: SessionManager) -> None:
    image = _image(demo_manager, 64)
    rois = label_rois(grid_labels(5, 5), image, "Nuclei")
    saves = _calls(roi_server, demo_manager, "IUpdate.saveAndReturnIds")
    roi_server.set_faults(drop_after=1, drop_after_reply=True, ops=["saveAndReturnIds"])
    try:
        result = run(lambda: save_rois(demo_manager, list(rois.values())))
    finally:
        roi_server.clear_faults()
    # The fault fired: the one batch was sent once, its reply lost, and retried.
    assert result.attempts == 3 and result.batches == 1
    assert _calls(roi_server, demo_manager, "IUpdate.saveAndReturnIds") == saves + 1
    on_server = _server_rois(roi_server, image)
    assert len(on_server) == len(rois) == 25
    assert sorted(result.ids) == sorted(r.getId().getValue() for r in on_server)
    assert all(r.reused for r in result.rois)  # found by key after the lost reply


def test_ten_thousand_objects_save_in_a_bounded_number_of_calls(
        roi_server: Emulator, demo_manager: SessionManager) -> None:
    labels = np.zeros((400, 1000), np.int32)  # 10,000 small objects, 4 pixels apart
    labels[1::4, 1::4] = np.arange(1, 100 * 250 + 1).reshape(100, 250)
    labels[labels > 10_000] = 0
    image = _image(demo_manager, 1000)
    rois = list(label_rois(labels, image, "Nuclei").values())
    assert len(rois) == 10_000
    key = run(demo_manager.connection).session_key
    roi_server.reset_call_counts()
    result = run(lambda: save_rois(demo_manager, rois))
    calls = roi_server.call_counts(key)
    assert len(set(result.ids)) == 10_000 and result.added == 10_000
    # One look-up of the image and its ROIs, then 1,000 ROIs per call.
    assert calls.get("IUpdate.saveAndReturnIds") == 10
    assert sum(calls.values()) <= 16, calls


def test_an_image_the_user_may_not_annotate_is_refused_naming_it(
        roi_server: Emulator, tmp_path: Path) -> None:
    shared = int(roi_server.seeded["shared_image"])
    other = _manager(roi_server, tmp_path, "other")
    try:
        rois = list(label_rois(grid_labels(2, 2), shared, "Nuclei").values())
        with pytest.raises(PermissionDenied) as caught:
            run(lambda: save_rois(other, rois))
        assert f"image {shared}" in caught.value.message
        assert isinstance(caught.value, CannotAnnotate)
        assert (caught.value.kind, caught.value.object_id, caught.value.user) == (
            "Image", shared, "other")
        assert _calls(roi_server, other, "IUpdate.saveAndReturnIds") == 0
        with pytest.raises(NotFound, match="Image 987654"):
            run(lambda: save_rois(other, list(label_rois(grid_labels(1, 1), 987654,
                                                         "Nuclei").values())))
    finally:
        run(other.close)
    assert _server_rois(roi_server, shared) == []


def test_objects_larger_than_the_image_are_refused_before_anything_is_saved(
        roi_server: Emulator, demo_manager: SessionManager) -> None:
    image = _image(demo_manager, 32)
    labels = grid_labels(3, 3)  # 36 × 36: the last objects reach beyond 32 × 32
    rois = list(label_rois(labels, image, "Nuclei").values())
    with pytest.raises(LabelsLargerThanImage) as caught:
        run(lambda: save_rois(demo_manager, rois))
    assert caught.value.image_id == image and caught.value.image_size[:2] == (32, 32)
    assert _server_rois(roi_server, image) == []


def test_objects_from_an_image_that_is_not_from_omero_are_refused_before_the_run(
        cellprofiler_plugins: None) -> None:
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.object import ObjectSet
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.workspace import Workspace

    from cellprofiler_omero.cp_integration.save_objects import (
        NotAnOmeroImage,
        SaveObjectsToOMERO,
    )

    module = SaveObjectsToOMERO()
    module.objects_name.value = "Nuclei"
    module.image_name.value = "DNA"
    m = Measurements()
    m.add_image_measurement("URL_DNA", "omero:iid=5")
    m.next_image_set(2)
    m.add_image_measurement("URL_DNA", "file:///data/plate1/A01.tif")
    workspace = Workspace(Pipeline(), module, m, ObjectSet(), m, None)
    with pytest.raises(NotAnOmeroImage) as caught:
        module.prepare_run(workspace)
    assert caught.value.image_number == 2
    assert caught.value.url == "file:///data/plate1/A01.tif"
    assert caught.value.image_name == "DNA"


def test_a_script_saves_a_label_image_as_rois_in_one_call_once(
        roi_server: Emulator, demo_manager: SessionManager) -> None:
    import cellprofiler_omero as co
    from cellprofiler_omero.core import session as core_session

    image = _image(demo_manager, 64)
    core_session.set_manager(demo_manager)  # the session a script's connect() would make
    try:
        made = co.save_rois(f"Image:{image}", grid_labels(3, 3), name="Cells",
                            shape="polygon")
        again = co.save_rois(f"omero:iid={image}", grid_labels(3, 3), name="Cells",
                             shape="polygon")
    finally:
        core_session.set_manager(None)
    assert list(made) == list(range(1, 10)) and again == made
    rois = _server_rois(roi_server, image)
    assert sorted(r.getId().getValue() for r in rois) == sorted(made.values())
    assert all(type(s).__name__ == "PolygonI" for r in rois for s in r.copyShapes())


def test_the_roi_ids_become_a_roi_column_beside_the_image_column_without_aggregates(
        ) -> None:
    from cellprofiler_omero.core.model import ColumnKind
    from cellprofiler_omero.cp_integration.export_table import plan_tables

    columns = [("Image", "Count_Nuclei", "integer"),
               ("Nuclei", "Area", "float"), ("Nuclei", "OMERO_RoiID", "integer")]
    plans = {p.label: p for p in plan_tables(columns, "T", 64, relationships=False)}
    nuclei = plans["Nuclei"].schema.columns
    assert [(c.name, c.kind) for c in nuclei[:4]] == [
        ("ImageNumber", ColumnKind.LONG), ("ObjectNumber", ColumnKind.LONG),
        ("Image", ColumnKind.IMAGE), ("Roi", ColumnKind.ROI)]
    assert [c.name for c in nuclei[4:]] == ["Area"]
    assert not any("RoiID" in c.name for c in plans["Image"].schema.columns)


def test_every_save_objects_setting_round_trips_through_cppipe(
        cellprofiler_plugins: None) -> None:
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline
    from cellprofiler_omero.cp_integration.save_objects import SHAPE_POLYGON

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(nuclei_pipeline(3, save_rois=True)), raise_on_error=True)
    (module,) = [m for m in pipeline.modules() if m.module_name == "SaveObjectsToOMERO"]
    module.shape.value = SHAPE_POLYGON
    module.tolerance.value = 2.5
    module.wants_color.value = True
    module.color.value = "#FF0000"
    out = io.StringIO()
    pipeline.dump(out)
    again = Pipeline()
    again.loadtxt(io.StringIO(out.getvalue()), raise_on_error=True)
    (loaded,) = [m for m in again.modules() if m.module_name == "SaveObjectsToOMERO"]
    assert [s.unicode_value for s in loaded.settings()] == [
        "Nuclei", "DNA", SHAPE_POLYGON, "2.5", "Yes", "#FF0000"]
    assert loaded.shape_kind() is ShapeKind.POLYGON
    assert loaded.stroke_color() == rgba_to_int(255, 0, 0)

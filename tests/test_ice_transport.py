"""The Ice transport: reading, uploading and tables against the emulator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.errors import NotFound, PermissionDenied, UnsupportedData
from cellprofiler_omero.core.model import (
    ColumnKind,
    ColumnSpec,
    PhysicalSize,
    PixelType,
    Region,
    TableSchema,
    TableTarget,
)
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import Kind, parse_image, parse_one
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.tables import BULK_ANNOTATION_NS, TableWriter
from cellprofiler_omero.core.uploading import PROVENANCE_NS, upload
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import TEST_SEED, Target, run


def read(manager: SessionManager, image_id: int, **kw: Any) -> np.ndarray:
    reader = ImageReader(manager, parse_image(f"Image:{image_id}"))
    try:
        return run(lambda: reader.read(**kw))
    finally:
        run(reader.aclose)


# -- metadata -----------------------------------------------------------------------------

def test_metadata_has_sizes_type_channels_and_physical_sizes(manager: SessionManager,
                                                             seeded: dict[str, Any]) -> None:
    conn = run(manager.connection)
    meta = run(lambda: conn.image_meta(seeded["zstack"]))
    assert (meta.size_x, meta.size_y, meta.size_z, meta.size_c, meta.size_t) == (
        256, 256, 8, 3, 1)
    assert meta.pixel_type is PixelType.UINT16
    assert meta.channel_names == ("DAPI", "Cytoplasm", "Spots")
    assert meta.channels[2].color == (255, 0, 0, 255)
    assert meta.physical_size == PhysicalSize(0.2, 0.2, 0.5)
    assert (meta.owner, meta.group) == ("demo", "demo")


def test_metadata_has_plate_position(manager: SessionManager, emulator: Emulator) -> None:
    conn = run(manager.connection)
    well = parse_one(f"Well:{emulator.seeded['wells']['B03']}")
    images = run(lambda: conn.images_in(well))
    meta = run(lambda: conn.image_meta(images[1].id))
    assert meta.plate is not None
    assert (meta.plate.row, meta.plate.column, meta.plate.field) == (1, 2, 1)
    assert meta.plate.well_name == "B03" and meta.plate.screen_name == "Demo screen"


def test_metadata_lists_resolution_levels_full_first(manager: SessionManager,
                                                     seeded: dict[str, Any]) -> None:
    conn = run_conn(manager)
    meta = run(lambda: conn.image_meta(seeded["large"]))
    assert meta.levels[0] == (4096, 4096) and meta.levels[1] == (2048, 2048)


def run_conn(manager: SessionManager) -> Any:
    return run(manager.connection)


def test_containers_expand_in_a_stable_order(manager: SessionManager,
                                             seeded: dict[str, Any]) -> None:
    conn = run(manager.connection)
    dataset = run(lambda: conn.images_in(parse_one(f"Dataset:{seeded['dataset']}")))
    assert [r.id for r in dataset] == seeded["fields"]
    plate = run(lambda: conn.images_in(parse_one(f"Plate:{seeded['plate']}")))
    screen = run(lambda: conn.images_in(parse_one(f"Screen:{seeded['screen']}")))
    assert [r.id for r in plate] == [r.id for r in screen] and len(plate) == 12
    positions = [run(lambda i=r.id: conn.image_meta(i)).plate for r in plate[:4]]
    assert [(p.row, p.column, p.field) for p in positions] == [(0, 0, 0), (0, 0, 1),
                                                               (0, 1, 0), (0, 1, 1)]
    project = run(lambda: conn.images_in(parse_one(f"Project:{seeded['project']}")))
    assert set(seeded["fields"]) <= {r.id for r in project}
    assert all(r.kind is Kind.IMAGE for r in project)


def test_unknown_container_is_not_found(manager: SessionManager) -> None:
    conn = run(manager.connection)
    with pytest.raises(NotFound, match="Dataset 999999"):
        run(lambda: conn.images_in(parse_one("Dataset:999999")))


# -- pixels -------------------------------------------------------------------------------

@pytest.mark.parametrize("ptype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "float", "double", "bit"])
def test_every_pixel_type_reads_byte_identical(manager: SessionManager,
                                               seeded: dict[str, Any], ptype: str) -> None:
    data = read(manager, seeded["types"][ptype])
    expected = synthetic.every_type(TEST_SEED.seed, 64)[ptype]
    assert data.dtype == expected.dtype
    np.testing.assert_array_equal(data[0, 0], expected)


def test_regions_channels_and_z_are_read_together(manager: SessionManager,
                                                  seeded: dict[str, Any]) -> None:
    data = read(manager, seeded["zstack"], z=[1, 5], c=[2, 0], region=Region(10, 20, 30, 40))
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data, stack[[1, 5]][:, [2, 0], 20:60, 10:40])


def test_plane_larger_than_the_tile_limit_is_read_in_tiles(settings_for: Any,
                                                           seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for(transfer__max_chunk_bytes=40_000,
                                      ice__message_limit_kib=100))
    run(lambda: mgr.connect(user="demo", password="demo"))
    data = read(mgr, seeded["fields"][2], c=[0, 1])
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + 2, TEST_SEED.field_size)
    np.testing.assert_array_equal(data[0], pixels)
    run(mgr.close)


def test_pyramid_levels_read_in_the_core_numbering(manager: SessionManager,
                                                   seeded: dict[str, Any]) -> None:
    full = synthetic.large(TEST_SEED.seed, 4096)
    half = read(manager, seeded["large"], level=1, region=Region(100, 200, 300, 50))
    np.testing.assert_array_equal(half[0, 0], full[::2, ::2][200:250, 100:400])


def test_out_of_range_requests_raise(manager: SessionManager, seeded: dict[str, Any]) -> None:
    with pytest.raises(IndexError, match="c=5"):
        read(manager, seeded["fields"][0], c=[5])
    with pytest.raises(IndexError, match="outside"):
        read(manager, seeded["fields"][0], region=Region(500, 0, 100, 10))
    with pytest.raises(IndexError, match="level 9"):
        read(manager, seeded["large"], level=9)


def test_another_users_private_image_is_not_readable(settings_for: Any,
                                                     seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for())
    run(lambda: mgr.connect(user="other", password="other"))
    with pytest.raises(NotFound, match="may not read it"):
        read(mgr, seeded["fields"][0])
    run(mgr.close)


def test_images_in_other_groups_are_readable(manager: SessionManager,
                                             seeded: dict[str, Any]) -> None:
    assert manager.info.group == "demo"
    data = read(manager, seeded["shared_image"], c=[0])
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed + 77, 256)
    np.testing.assert_array_equal(data[0, 0], pixels[0])


def test_dropped_connection_mid_read_ends_with_correct_data(manager: SessionManager,
                                                            faults: Emulator,
                                                            seeded: dict[str, Any]) -> None:
    reader = ImageReader(manager, parse_image(f"Image:{seeded['fields'][1]}"))
    run(reader.metadata)
    faults.set_faults(drop_after=2, ops=["getTile"])
    data = run(lambda: reader.read(c=[0, 1]))
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + 1, TEST_SEED.field_size)
    np.testing.assert_array_equal(data[0], pixels)
    run(reader.aclose)


def test_stores_are_reused_across_reads_and_images(manager: SessionManager,
                                                   seeded: dict[str, Any]) -> None:
    reader = ImageReader(manager, parse_image(f"Image:{seeded['fields'][0]}"))
    run(lambda: reader.read(c=[0]))
    pool = reader._source._source.pool  # type: ignore[union-attr]
    opened = pool.stats.opened
    for _ in range(5):
        run(lambda: reader.read(c=[0, 1]))
    assert pool.stats.opened <= max(opened, manager.settings.ice.stores_per_image)
    run(reader.aclose)
    # The stores stay with the connection: the next image rebinds them (setPixelsId).
    assert pool._idle
    other = ImageReader(manager, parse_image(f"Image:{seeded['fields'][1]}"))
    before = pool.stats.opened
    run(lambda: other.read(c=[0]))
    assert pool.stats.opened == before and pool.stats.rebound >= 1
    run(other.aclose)


# -- uploading ----------------------------------------------------------------------------

def _dataset_image_ids(manager: SessionManager, dataset: int) -> list[int]:
    conn = run(manager.connection)
    return [r.id for r in run(lambda: conn.images_in(parse_one(f"Dataset:{dataset}")))]


@pytest.mark.parametrize("shape,axes,expected", [
    ((20, 30), None, (1, 1, 1, 20, 30)),
    ((20, 30, 3), "YXC", (1, 1, 3, 20, 30)),
    ((4, 20, 30), "ZYX", (1, 4, 1, 20, 30)),
    ((4, 20, 30, 2), None, (1, 4, 2, 20, 30)),
    ((2, 3, 20, 30, 2), None, (2, 3, 2, 20, 30)),
])
@pytest.mark.real_server
def test_upload_shapes_round_trip(target_manager: SessionManager, shape: tuple[int, ...],
                                  axes: str | None, expected: tuple[int, ...]) -> None:
    manager = target_manager
    rng = np.random.default_rng(sum(shape))
    array = rng.integers(0, 60000, shape).astype(np.uint16)
    result = run(lambda: upload(manager, array, name="shape", axes=axes))
    conn = run_conn(manager)
    meta = run(lambda: conn.image_meta(result.id))
    t, z, _c, _y, _x = expected
    assert (meta.size_t, meta.size_z, meta.size_c, meta.size_y, meta.size_x) == expected
    from cellprofiler_omero.core.uploading import to_tzcyx

    tzcyx = to_tzcyx(array, axes)
    for tt in range(t):
        data = read(manager, result.id, z=list(range(z)), t=tt)
        np.testing.assert_array_equal(data, tzcyx[tt])


@pytest.mark.real_server
def test_upload_converts_masks_and_int64_labels(target_manager: SessionManager) -> None:
    manager = target_manager
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    labels = np.zeros((16, 16), np.int64)
    labels[1, 1], labels[2, 2] = 3, 300
    r1 = run(lambda: upload(manager, mask, name="mask"))
    r2 = run(lambda: upload(manager, labels, name="labels"))
    conn = run(manager.connection)
    assert run(lambda: conn.image_meta(r1.id)).pixel_type is PixelType.UINT8
    assert run(lambda: conn.image_meta(r2.id)).pixel_type is PixelType.UINT16
    np.testing.assert_array_equal(read(manager, r1.id)[0, 0], mask.astype(np.uint8))
    np.testing.assert_array_equal(read(manager, r2.id)[0, 0], labels)


def test_labels_too_large_for_omero_are_refused(manager: SessionManager) -> None:
    labels = np.array([[0, 2**40]], dtype=np.int64)
    with pytest.raises(UnsupportedData, match="do not fit"):
        run(lambda: upload(manager, labels, name="huge"))


def test_upload_sets_names_sizes_description_dataset_and_provenance(
        manager: SessionManager, scratch_dataset: int, seeded: dict[str, Any],
        blitz: Any) -> None:
    array = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(8, 8, 2)
    result = run(lambda: upload(
        manager, array, name="labelled", axes="YXC", dataset_id=scratch_dataset,
        channel_names=["Nuclei", "Cells"], description="from a test",
        physical_size=PhysicalSize(0.3, 0.3, None), source_image_ids=[seeded["fields"][0]],
        source_urls=["omero:iid=3"]))
    conn = run_conn(manager)
    meta = run(lambda: conn.image_meta(result.id))
    assert meta.channel_names == ("Nuclei", "Cells")
    assert meta.physical_size.x == pytest.approx(0.3)
    assert meta.description == "from a test"
    assert result.id in _dataset_image_ids(manager, scratch_dataset)
    image = blitz().getObject("Image", result.id)
    anns = [a for a in image.listAnnotations() if a.getNs() == PROVENANCE_NS]
    assert len(anns) == 1
    values = dict(anns[0].getValue())
    assert values["source_image_id"] == str(seeded["fields"][0])
    assert values["source_url"] == "omero:iid=3"


@pytest.mark.real_server
def test_same_key_uploads_once(target_manager: SessionManager, target: Target) -> None:
    manager, scratch_dataset = target_manager, target.dataset_id
    array = np.ones((8, 8), np.uint8)
    first = run(lambda: upload(manager, array, name="once", dataset_id=scratch_dataset,
                               client_key="same-key-1"))
    second = run(lambda: upload(manager, array, name="once", dataset_id=scratch_dataset,
                                client_key="same-key-1"))
    assert second.id == first.id and second.reused
    assert _dataset_image_ids(manager, scratch_dataset).count(first.id) == 1


def test_dropped_connection_mid_upload_makes_no_duplicate(manager: SessionManager,
                                                          faults: Emulator,
                                                          scratch_dataset: int) -> None:
    before = set(_dataset_image_ids(manager, scratch_dataset))
    array = np.random.default_rng(3).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    faults.set_faults(drop_after=2, ops=["setPlane"])
    result = run(lambda: upload(manager, array, name="dropped", axes="ZYX",
                                dataset_id=scratch_dataset, client_key="drop-key"))
    faults.clear_faults()
    after = set(_dataset_image_ids(manager, scratch_dataset))
    assert after - before == {result.id}
    np.testing.assert_array_equal(read(manager, result.id, z=[0, 1, 2])[:, 0], array)


def test_upload_into_a_dataset_without_write_access_is_refused(
        settings_for: Any, seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for())
    run(lambda: mgr.connect(user="other", password="other"))
    with pytest.raises(PermissionDenied, match="may not add images"):
        run(lambda: upload(mgr, np.zeros((4, 4), np.uint8), name="x",
                           dataset_id=seeded["shared_dataset"]))
    run(mgr.close)


def test_large_plane_is_written_in_tiles(settings_for: Any) -> None:
    mgr = SessionManager(settings_for(transfer__max_chunk_bytes=50_000,
                                      ice__message_limit_kib=200))
    run(lambda: mgr.connect(user="demo", password="demo"))
    array = np.random.default_rng(9).integers(0, 2**16, (300, 400)).astype(np.uint16)
    result = run(lambda: upload(mgr, array, name="tiled"))
    np.testing.assert_array_equal(read(mgr, result.id)[0, 0], array)
    run(mgr.close)


# -- tables -------------------------------------------------------------------------------

SCHEMA = TableSchema("measurements.h5", (
    ColumnSpec("Image", ColumnKind.IMAGE), ColumnSpec("ObjectNumber", ColumnKind.LONG),
    ColumnSpec("Area", ColumnKind.DOUBLE), ColumnSpec("Label", ColumnKind.STRING, 6),
    ColumnSpec("Edge", ColumnKind.BOOL)))


def _rows(n: int, start: int = 0) -> dict[str, list[Any]]:
    return {"Image": [3] * n, "ObjectNumber": list(range(start + 1, start + n + 1)),
            "Area": [float(i) * 1.5 for i in range(start, start + n)],
            "Label": [f"n{i}" for i in range(start, start + n)],
            "Edge": [i % 2 == 0 for i in range(start, start + n)]}


def _read_table(blitz: Any, file_id: int) -> Any:
    import omero2pandas

    return omero2pandas.read_table(file_id=file_id, omero_connector=blitz())


@pytest.mark.parametrize("kind,key", [("Project", "project"), ("Dataset", "dataset"),
                                      ("Screen", "screen"), ("Plate", "plate"),
                                      ("Image", "zstack")])
def test_tables_attach_to_every_container_kind(manager: SessionManager, seeded: dict[str, Any],
                                               blitz: Any, kind: str, key: str) -> None:
    writer = TableWriter(manager, TableTarget(kind, seeded[key]), SCHEMA)
    run(lambda: writer.append(_rows(3)))
    info = run(writer.close)
    assert info.rows == 3
    obj = blitz().getObject(kind, seeded[key])
    anns = [a for a in obj.listAnnotations() if a.getId() == info.annotation_id]
    assert anns and anns[0].getNs() == BULK_ANNOTATION_NS
    assert anns[0].getFile().getId() == info.file_id


def test_tables_attach_to_wells(manager: SessionManager, seeded: dict[str, Any]) -> None:
    writer = TableWriter(manager, TableTarget("Well", seeded["wells"]["A01"]), SCHEMA)
    run(lambda: writer.append(_rows(1)))
    assert run(writer.close).rows == 1


@pytest.mark.real_server
def test_rows_read_back_with_omero2pandas_with_types(target_manager: SessionManager,
                                                     target: Target,
                                                     target_blitz: Any) -> None:
    manager, blitz = target_manager, target_blitz
    writer = TableWriter(manager, TableTarget("Dataset", target.dataset_id), SCHEMA)
    run(lambda: writer.append(_rows(5)))
    info = run(writer.close)
    frame = _read_table(blitz, info.file_id)
    assert frame["ObjectNumber"].tolist() == [1, 2, 3, 4, 5]
    assert frame["Area"].tolist() == [0.0, 1.5, 3.0, 4.5, 6.0]
    assert frame["Label"].tolist() == ["n0", "n1", "n2", "n3", "n4"]
    assert frame["Edge"].tolist() == [True, False, True, False, True]
    assert str(frame["ObjectNumber"].dtype).startswith("int")


def test_rows_are_sent_in_batches_not_per_append(manager: SessionManager, settings_for: Any,
                                                 seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for(tables__batch_rows=10))
    run(lambda: mgr.connect(user="demo", password="demo"))
    writer = TableWriter(mgr, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    calls: list[int] = []

    class Spy:
        from cellprofiler_omero.core.hookspecs import hookimpl

        @hookimpl
        def omero_table_written(self, session: Any, table: Any, rows_added: int) -> None:
            calls.append(rows_added)

    mgr.registry.register(Spy(), "spy")
    for i in range(25):
        run(lambda i=i: writer.append(_rows(1, i)))
    assert calls == [10, 10]
    assert run(writer.close).rows == 25
    assert calls == [10, 10, 5]
    run(mgr.close)


@pytest.mark.real_server
def test_missing_values_become_nan_in_double_columns(target_manager: SessionManager,
                                                     target: Target,
                                                     target_blitz: Any) -> None:
    manager, blitz = target_manager, target_blitz
    writer = TableWriter(manager, TableTarget("Dataset", target.dataset_id), SCHEMA)
    rows = _rows(2)
    rows["Area"] = [None, 2.0]
    run(lambda: writer.append(rows))
    frame = _read_table(blitz, run(writer.close).file_id)
    assert np.isnan(frame["Area"][0]) and frame["Area"][1] == 2.0


def test_missing_values_in_long_columns_are_refused_before_sending(
        manager: SessionManager, seeded: dict[str, Any]) -> None:
    writer = TableWriter(manager, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    rows = _rows(2)
    rows["ObjectNumber"] = [1, None]
    with pytest.raises(ValueError, match="Row 1 has no value in long column 'ObjectNumber'"):
        run(lambda: writer.append(rows))
    assert run(writer.flush) == 0


@pytest.mark.real_server
def test_long_strings_are_truncated_by_default(target_manager: SessionManager,
                                               target: Target, target_blitz: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    manager, blitz = target_manager, target_blitz
    writer = TableWriter(manager, TableTarget("Dataset", target.dataset_id), SCHEMA)
    rows = _rows(1)
    rows["Label"] = ["abcdefghij"]
    run(lambda: writer.append(rows))
    frame = _read_table(blitz, run(writer.close).file_id)
    assert frame["Label"].tolist() == ["abcdef"]
    assert "truncated 1 value(s) in column 'Label'" in caplog.text


def test_long_strings_can_be_refused(settings_for: Any, seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for(tables__long_strings="error"))
    run(lambda: mgr.connect(user="demo", password="demo"))
    writer = TableWriter(mgr, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    rows = _rows(1)
    rows["Label"] = ["abcdefghij"]
    with pytest.raises(ValueError, match="does not fit string column 'Label'"):
        run(lambda: writer.append(rows))
    run(mgr.close)


def test_too_many_columns_are_refused_before_the_server_fails(manager: SessionManager,
                                                              seeded: dict[str, Any]) -> None:
    wide = TableSchema("wide.h5", tuple(ColumnSpec(f"c{i}", ColumnKind.DOUBLE)
                                        for i in range(700)))
    with pytest.raises(UnsupportedData, match=r"700 columns.*limit here is 500"):
        TableWriter(manager, TableTarget("Dataset", seeded["dataset"]), wide)


@pytest.mark.parametrize("name", ["__reserved", "a/b", ""])
def test_bad_column_names_are_refused(manager: SessionManager, seeded: dict[str, Any],
                                      name: str) -> None:
    schema = TableSchema("bad.h5", (ColumnSpec(name, ColumnKind.DOUBLE),))
    with pytest.raises(UnsupportedData):
        TableWriter(manager, TableTarget("Dataset", seeded["dataset"]), schema)


def test_lost_reply_after_add_data_does_not_duplicate_rows(manager: SessionManager,
                                                           faults: Emulator,
                                                           seeded: dict[str, Any],
                                                           blitz: Any) -> None:
    writer = TableWriter(manager, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    run(writer.open)
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["addData"])
    run(lambda: writer.append(_rows(4)))
    run(writer.flush)
    faults.clear_faults()
    info = run(writer.close)
    assert info.rows == 4
    assert _read_table(blitz, info.file_id)["ObjectNumber"].tolist() == [1, 2, 3, 4]


def test_dropped_connection_before_add_data_loses_no_rows(manager: SessionManager,
                                                          faults: Emulator,
                                                          seeded: dict[str, Any]) -> None:
    writer = TableWriter(manager, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    run(writer.open)
    faults.set_faults(drop_after=1, ops=["addData"])
    run(lambda: writer.append(_rows(3)))
    run(writer.flush)
    faults.clear_faults()
    assert run(writer.close).rows == 3


def test_table_on_another_users_object_is_refused(settings_for: Any,
                                                  seeded: dict[str, Any]) -> None:
    mgr = SessionManager(settings_for())
    run(lambda: mgr.connect(user="other", password="other"))
    writer = TableWriter(mgr, TableTarget("Dataset", seeded["dataset"]), SCHEMA)
    with pytest.raises(NotFound):
        run(writer.open)
    run(mgr.close)

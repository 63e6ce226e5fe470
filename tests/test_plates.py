"""Plates as OMERO's own clients and the product see them, on a server with real rules:
BlitzGateway's plate helpers unmodified, a plate in two screens, a well without a place."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import omero
import omero.model
import pytest
from omero.rtypes import rstring, unwrap

from cellprofiler_omero.commands.urls import loaddata_csv
from cellprofiler_omero.core.refs import Kind, ObjectRef, parse_one
from cellprofiler_omero.core.session import SessionManager
from tests.conftest import TEST_SEED, run

ROWS, COLUMNS, FIELDS = TEST_SEED.plate_rows, TEST_SEED.plate_columns, TEST_SEED.plate_fields


def label(row: int, column: int) -> str:
    return f"{chr(65 + row)}{column + 1:02d}"


# -- BlitzGateway's plate helpers, unmodified ----------------------------------------------------

def test_blitzgateway_reads_the_plates_grid_size(blitz: Any, seeded: dict[str, Any]) -> None:
    plate = blitz().getObject("Plate", seeded["plate"])
    assert plate.getName() == "Plate 1"
    assert plate.getGridSize() == {"rows": ROWS, "columns": COLUMNS}
    assert plate.getRowLabels() == ["A", "B"] and plate.getColumnLabels() == [1, 2, 3]


def test_blitzgateway_well_grid_holds_every_well_at_its_place(blitz: Any,
                                                              seeded: dict[str, Any]) -> None:
    plate = blitz().getObject("Plate", seeded["plate"])
    grid = plate.getWellGrid()
    assert [[w.getId() for w in row] for row in grid] == [
        [seeded["wells"][label(r, c)] for c in range(COLUMNS)] for r in range(ROWS)]
    assert grid[1][2].getWellPos() == "B3"
    assert grid[1][2].getImage(1).getName() == "B03_f1"


def test_blitzgateway_lists_wells_their_samples_and_images(blitz: Any,
                                                           seeded: dict[str, Any]) -> None:
    plate = blitz().getObject("Plate", seeded["plate"])
    wells = list(plate.listChildren())
    assert len(wells) == ROWS * COLUMNS == plate.countChildren()
    for well in wells:
        name = label(well.row, well.column)
        assert well.countWellSample() == FIELDS
        assert [well.getWellSample(i).getImage().getName() for i in range(FIELDS)] == [
            f"{name}_f{i}" for i in range(FIELDS)]
        assert well.getWellSample(FIELDS) is None


def test_blitzgateway_counts_fields_from_the_well_sample_indexes(
        blitz: Any, seeded: dict[str, Any]) -> None:
    plate = blitz().getObject("Plate", seeded["plate"])
    assert plate.getNumberOfFields() == (0, FIELDS - 1)


def test_blitzgateway_well_loads_its_samples_when_asked(blitz: Any,
                                                        seeded: dict[str, Any]) -> None:
    well = blitz().getObject("Well", seeded["wells"]["A02"])
    assert [ws.getImage().getName() for ws in well.listChildren()] == ["A02_f0", "A02_f1"]
    assert well.getParent().getId() == seeded["plate"]


# -- a plate in two screens -----------------------------------------------------------------

@pytest.fixture
def second_screen(blitz: Any, seeded: dict[str, Any]) -> Iterator[int]:
    """The seeded plate linked to a second screen as any client links it (IUpdate);
    the link and the screen go again afterwards."""
    conn = blitz()
    update = conn.getUpdateService()
    screen = omero.model.ScreenI()
    screen.setName(rstring("Second screen"))
    screen = update.saveAndReturnObject(screen)
    link = omero.model.ScreenPlateLinkI()
    link.setParent(omero.model.ScreenI(screen.getId(), False))
    link.setChild(omero.model.PlateI(seeded["plate"], False))
    link = update.saveAndReturnObject(link)
    yield int(unwrap(screen.getId()))
    update.deleteObject(omero.model.ScreenPlateLinkI(link.getId(), False))
    update.deleteObject(omero.model.ScreenI(screen.getId(), False))


def test_blitzgateway_gets_a_plate_that_two_screens_hold(blitz: Any, seeded: dict[str, Any],
                                                        second_screen: int) -> None:
    plate = blitz().getObject("Plate", seeded["plate"])
    assert plate is not None and plate.getId() == seeded["plate"]
    assert sorted(s.getId() for s in plate.listParents()) == [seeded["screen"], second_screen]


def test_plate_position_of_an_image_in_a_plate_of_two_screens(
        manager: SessionManager, seeded: dict[str, Any], second_screen: int) -> None:
    conn = run(manager.connection)
    images = run(lambda: conn.images_in(parse_one(f"Well:{seeded['wells']['B03']}")))
    meta = run(lambda: conn.image_meta(images[1].id))
    assert meta.plate is not None
    assert (meta.plate.plate_id, meta.plate.well_name, meta.plate.field) == (
        seeded["plate"], "B03", 1)
    # Of several screens, the one with the lowest id: the same answer on every call.
    assert (meta.plate.screen_id, meta.plate.screen_name) == (seeded["screen"], "Demo screen")
    screen = run(lambda: conn.images_in(parse_one(f"Screen:{second_screen}")))
    assert [r.id for r in screen] == [
        r.id for r in run(lambda: conn.images_in(parse_one(f"Plate:{seeded['plate']}")))]


def test_field_is_the_well_samples_place_in_its_well(manager: SessionManager,
                                                     seeded: dict[str, Any]) -> None:
    conn = run(manager.connection)
    images = run(lambda: conn.images_in(parse_one(f"Plate:{seeded['plate']}")))
    metas = [run(lambda i=ref.id: conn.image_meta(i)) for ref in images]
    assert [m.name for m in metas] == [
        f"{m.plate.well_name}_f{m.plate.field}" for m in metas if m.plate is not None]


# -- a well without row or column ---------------------------------------------------------------

@pytest.fixture
def unplaced_well(blitz: Any, scratch_dataset: int) -> dict[str, int]:
    """A new plate whose one well has neither row nor column (both optional in OMERO's
    model), holding one new image, made as any client makes them."""
    conn = blitz()
    planes = [np.full((16, 16), 7, dtype=np.uint16)]
    image = conn.createImageFromNumpySeq(iter(planes), "unplaced", sizeZ=1, sizeC=1, sizeT=1,
                                         dataset=conn.getObject("Dataset", scratch_dataset))
    update = conn.getUpdateService()
    plate = omero.model.PlateI()
    plate.setName(rstring("Plate without places"))
    plate = update.saveAndReturnObject(plate)
    well = omero.model.WellI()
    well.setPlate(omero.model.PlateI(plate.getId(), False))
    sample = omero.model.WellSampleI()
    sample.setImage(omero.model.ImageI(image.getId(), False))
    well.addWellSample(sample)
    well = update.saveAndReturnObject(well)
    assert well.getRow() is None and well.getColumn() is None
    return {"plate": int(unwrap(plate.getId())), "well": int(unwrap(well.getId())),
            "image": int(image.getId())}


def test_image_in_a_well_without_row_or_column_has_no_well_name(
        manager: SessionManager, unplaced_well: dict[str, int]) -> None:
    conn = run(manager.connection)
    meta = run(lambda: conn.image_meta(unplaced_well["image"]))
    assert meta.plate is not None
    assert (meta.plate.row, meta.plate.column, meta.plate.field) == (None, None, 0)
    assert meta.plate.well_name == "" and meta.plate.plate_name == "Plate without places"


def test_plate_with_an_unplaced_well_lists_and_exports(manager: SessionManager,
                                                       unplaced_well: dict[str, int]) -> None:
    conn = run(manager.connection)
    plate = ObjectRef(Kind.PLATE, unplaced_well["plate"])
    page = run(lambda: conn.children(plate, 0, 10))
    assert [(n.kind, n.id, n.name) for n in page.items] == [
        ("Well", unplaced_well["well"], f"Well {unplaced_well['well']}")]
    images = run(lambda: conn.images_in(plate))
    assert [r.id for r in images] == [unplaced_well["image"]]
    metas = [run(lambda: conn.image_meta(unplaced_well["image"]))]
    rows = list(csv.DictReader(io.StringIO(loaddata_csv(images, metas, lambda r: str(r)))))
    assert len(rows) == 1 and rows[0]["Metadata_Well"] == ""


def test_blitzgateway_grid_of_a_plate_without_places_is_empty(
        blitz: Any, unplaced_well: dict[str, int]) -> None:
    # max(row) over wells without rows is null: BlitzGateway reports an empty grid.
    plate = blitz().getObject("Plate", unplaced_well["plate"])
    assert plate.getGridSize() == {"rows": 0, "columns": 0}
    well = blitz().getObject("Well", unplaced_well["well"])
    assert well.row is None and well.getImage().getId() == unplaced_well["image"]


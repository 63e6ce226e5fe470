"""Unit-valued properties in HQL projections, as a real OMERO.server answers them.

In omero-model a unit-valued property (``Pixels.physicalSizeX``, ``LogicalChannel.
emissionWave``) is an ``@Embedded`` ``ome.model.units.Length``: a ``value`` column and a
``unit`` column holding a ``UnitsLength`` Java enum (``GenericEnumType``). omero-blitz's
``IceMapper.toRType`` sends a projected component as a map of its value, its unit's enum
name and the unit's symbol, and a projected ``.unit`` alone as the enum's name. The
product reads an image's physical sizes that way, with projections only.
"""

from __future__ import annotations

from typing import Any

import omero
import omero.sys
from omero.rtypes import rlong, unwrap

from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.emulator import Emulator
from cellprofiler_omero.transports.ice.connection import _microns_of
from tests.conftest import run

ALL = {"omero.group": "-1"}


def image_id(image: int) -> omero.sys.Parameters:
    p = omero.sys.Parameters()
    p.map = {"id": rlong(image)}
    return p


def test_a_projected_component_path_gives_the_value_as_a_double_and_the_unit_as_its_name(
        blitz: Any, seeded: dict[str, Any]) -> None:
    query = blitz().getQueryService()
    hql = ("select p.physicalSizeX.value, p.physicalSizeX.unit, p.physicalSizeZ.value, "
           "p.physicalSizeZ.unit from Pixels p where p.image.id = :id")
    [row] = query.projection(hql, image_id(seeded["zstack"]), ALL)
    assert [isinstance(v, t) for v, t in zip(row, [omero.RDouble, omero.RString] * 2,
                                              strict=True)] == [True] * 4
    assert [unwrap(v) for v in row] == [0.2, "MICROMETER", 0.5, "MICROMETER"]
    # A field has no Z size: both columns are null, so both paths are null.
    [row] = query.projection(hql, image_id(seeded["fields"][0]), ALL)
    assert [unwrap(v) for v in row] == [0.65, "MICROMETER", None, None]


def test_a_projected_whole_component_is_a_map_of_value_unit_name_and_symbol(
        blitz: Any, seeded: dict[str, Any]) -> None:
    query = blitz().getQueryService()
    rows = query.projection(
        "select p.physicalSizeX, p.physicalSizeZ, lc.emissionWave from Pixels p "
        "join p.channels c join c.logicalChannel lc where p.image.id = :id "
        "order by lc.emissionWave.value", image_id(seeded["zstack"]), ALL)
    assert len(rows) == 3
    size_x, size_z, emission = rows[0]
    assert isinstance(size_x, omero.RMap)
    assert unwrap(size_x) == {"value": 0.2, "unit": "MICROMETER", "symbol": "µm"}
    assert isinstance(size_x.val["value"], omero.RDouble)
    assert unwrap(size_z) == {"value": 0.5, "unit": "MICROMETER", "symbol": "µm"}
    assert unwrap(emission) == {"value": 461.0, "unit": "NANOMETER", "symbol": "nm"}
    assert [unwrap(r[2])["value"] for r in rows] == [461.0, 520.0, 620.0]
    # An unset component (a field's Z size) is null, not a map of nulls.
    [[unset]] = query.projection("select p.physicalSizeZ from Pixels p where p.image.id = :id",
                                 image_id(seeded["fields"][0]), ALL)
    assert unset is None


def test_image_metadata_is_read_with_projections_only_and_physical_sizes_in_microns(
        manager: Any, emulator: Emulator, seeded: dict[str, Any]) -> None:
    reader = ImageReader(manager, ObjectRef(Kind.IMAGE, seeded["zstack"]))
    key = run(manager.connection).session_key
    emulator.call_counts(key, reset=True)
    meta = run(reader.metadata)
    calls = emulator.call_counts(key, reset=True)
    # The image, Pixels and channel rows, and the plate positions: two projections sent
    # together, no loaded objects (building a Pixels graph cost the client ~2 ms of CPU).
    assert {k: v for k, v in calls.items() if k.startswith("IQuery.")} == {
        "IQuery.projection": 2}
    assert (meta.physical_size.x, meta.physical_size.y, meta.physical_size.z) == \
        (0.2, 0.2, 0.5)
    assert [c.emission_wavelength for c in meta.channels] == [461.0, 520.0, 620.0]
    field = run(ImageReader(manager, ObjectRef(Kind.IMAGE, seeded["fields"][0])).metadata)
    assert (field.physical_size.x, field.physical_size.z) == (0.65, None)


def test_a_projected_length_in_another_unit_is_converted_to_microns_or_left_unset() -> None:
    # The emulator stores microns; a real server keeps the unit an importer wrote.
    assert _microns_of(650.0, "NANOMETER") == 0.65
    assert _microns_of(0.5, "MICROMETER") == 0.5
    # Pixels and reference frames have no length in microns; unknown names neither.
    assert _microns_of(3.0, "PIXEL") is None
    assert _microns_of(3.0, "FURLONG") is None
    assert _microns_of(None, None) is None

"""The emulator's RawPixelsStore refuses what a real OMERO.server's refuses.

Rules read from ome/omero-romio (``PixelsService.getPixelBuffer``,
``RomioPixelBuffer``, ``BfPyramidPixelBuffer``), ome/omero-server (``RawPixelsBean``)
and omero-blitz's ``IceMapper`` (which Ice exception each becomes). Driven only by
unmodified omero-py: ``omero.client``, ``BlitzGateway`` and ``omero.util.tiles``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import omero
import omero.clients
import omero.model
import pytest

from cellprofiler_omero.emulator import Emulator
from tests.conftest import pixels_of

#: Planes over 512 × 512 are pyramids here, so pyramid rules are quick to show.
THRESHOLD = 512
#: How long a new pyramid stays unreadable in this module's emulator.
BUILD_DELAY_MS = 2000


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    data: Path = tmp_path_factory.mktemp("strict-pixels")
    with Emulator(data, seed="users", pyramid_threshold=THRESHOLD, server_config={
            "omero.pixeldata.emulator_pyramid_delay_ms": str(BUILD_DELAY_MS)}) as emu:
        yield emu


@pytest.fixture
def sf(strict: Emulator) -> Iterator[Any]:
    """A demo user's session (omero.client), closed after the test."""
    client = omero.client(strict.host, strict.port)
    try:
        yield client.createSession("demo", "demo")
    finally:
        client.closeSession()


def new_image(sf: Any, size_x: int, size_y: int, *, ptype: str = "uint16", size_c: int = 1,
              size_z: int = 1) -> int:
    """An image made as omero-py's BlitzGateway makes one; returns its Pixels id."""
    ptype_obj = sf.getQueryService().findByQuery(
        f"from PixelsType as p where p.value='{ptype}'", None)
    image_id = sf.getPixelsService().createImage(
        size_x, size_y, size_z, 1, list(range(size_c)), ptype_obj, "strict", "")
    return pixels_of(sf, image_id.getValue())


@contextlib.contextmanager
def refused(kind: type, message: str) -> Iterator[None]:
    """The block raises ``kind`` with exactly ``message`` (the server's own text)."""
    with pytest.raises(kind) as caught:
        yield
    assert caught.value.message == message


def store_for(sf: Any, pixels_id: int) -> Any:
    store = sf.createRawPixelsStore()
    store.setPixelsId(pixels_id, True)
    return store


def wire(plane: np.ndarray) -> bytes:
    """Big-endian bytes, as RawPixelsStore carries pixels."""
    return plane.astype(plane.dtype.newbyteorder(">")).tobytes()


def write_tiles(store: Any, planes: dict[tuple[int, int, int], np.ndarray],
                tile: int = 256) -> None:
    """Tiles of ``tile`` in RPSTileLoop's order within each plane, planes as given."""
    for (z, c, t), plane in planes.items():
        height, width = plane.shape
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                part = plane[y:y + tile, x:x + tile]
                store.setTile(wire(part), z, c, t, x, y, part.shape[1], part.shape[0])


def bind_when_built(sf: Any, pixels_id: int, tries: int = 40) -> Any:
    """Bind a store, waiting out MissingPyramidException (or a writer's LockTimeout) by
    its backOff, capped at a second, as clients must."""
    for _ in range(tries):
        store = sf.createRawPixelsStore()
        try:
            store.setPixelsId(pixels_id, True)
            return store
        except omero.ConcurrencyException as exc:
            store.close()
            time.sleep(min(exc.backOff, 1000) / 1000)
    raise AssertionError(f"Pixels:{pixels_id} never became readable")


def read_plane(store: Any, size: int, dtype: str, z: int = 0, c: int = 0) -> np.ndarray:
    raw = store.getTile(z, c, 0, 0, 0, size, size)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(">")).reshape(size, size)


# -- rule 1: only stores bound before the pixel file existed may write ---------------------

def test_a_store_bound_after_the_first_write_answers_write_method_not_permitted(
        sf: Any) -> None:
    pid = new_image(sf, 64, 64)
    plane = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    first = store_for(sf, pid)
    first.setPlane(wire(plane), 0, 0, 0)
    late = store_for(sf, pid)
    for write in (lambda: late.setPlane(wire(plane), 0, 0, 0),
                  lambda: late.setTile(wire(plane[:8, :8]), 0, 0, 0, 0, 0, 8, 8),
                  lambda: late.setRow(wire(plane[:1]), 0, 0, 0, 0),
                  lambda: late.setRegion(8, 0, b"\0" * 8)):
        with pytest.raises(omero.ApiUsageException) as caught:
            write()
        assert caught.value.message == "Write-method not permitted."
    first.setPlane(wire(plane[::-1]), 0, 0, 0)  # the early store keeps writing
    first.save()
    assert np.array_equal(read_plane(late, 64, "uint16"), plane[::-1])


def test_stores_bound_before_the_first_write_may_all_write(sf: Any) -> None:
    pid = new_image(sf, 32, 32, size_c=2)
    stores = [store_for(sf, pid), store_for(sf, pid)]
    planes = [np.full((32, 32), 7 + c, dtype=np.uint16) for c in range(2)]
    for c, store in enumerate(stores):
        store.setPlane(wire(planes[c]), 0, c, 0)
    for store in stores:
        store.close()
    reader = store_for(sf, pid)
    assert [int(read_plane(reader, 32, "uint16", c=c)[0, 0]) for c in range(2)] == [7, 8]


def test_reading_through_a_writable_store_creates_the_pixel_file(sf: Any) -> None:
    # RomioPixelBuffer opens its file read-write for reads too, which creates it.
    pid = new_image(sf, 16, 16)
    early = store_for(sf, pid)
    early.getTile(0, 0, 0, 0, 0, 4, 4)
    late = store_for(sf, pid)
    with refused(omero.ApiUsageException, "Write-method not permitted."):
        late.setPlane(b"\0" * 512, 0, 0, 0)


def test_seeded_images_are_read_only_and_seeded_pyramids_readable_at_once(
        emulator: Emulator, seeded: dict[str, Any]) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("demo", "demo")
        field = store_for(sf, pixels_of(sf, seeded["fields"][0]))
        with refused(omero.ApiUsageException, "Write-method not permitted."):
            field.setPlane(field.getPlane(0, 0, 0), 0, 0, 0)
        large = store_for(sf, pixels_of(sf, seeded["large"]))  # no MissingPyramidException
        assert large.requiresPixelsPyramid() and large.getResolutionLevels() > 1
        with refused(omero.ApiUsageException, "In read-only mode!"):
            large.setTile(b"\0" * 32, 0, 0, 0, 0, 0, 4, 4)
    finally:
        client.closeSession()


# -- rule 2: big integer planes are pyramids, written tile by tile through one store --------

@pytest.mark.parametrize("size,ptype,pyramid", [
    ((1024, 1024), "uint16", True),
    ((1024, 256), "uint16", False),  # wider than max_plane_width, but not by area
    ((1024, 1024), "float", False),  # max_plane_float_override
    ((1024, 1024), "double", False),
    ((1024, 1024), "int32", True),
])
def test_requires_pixels_pyramid_follows_the_plane_area_and_type(
        sf: Any, size: tuple[int, int], ptype: str, pyramid: bool) -> None:
    store = store_for(sf, new_image(sf, *size, ptype=ptype))
    assert store.requiresPixelsPyramid() is pyramid
    store.close()


def test_a_pyramid_refuses_plane_and_row_writes(sf: Any) -> None:
    store = store_for(sf, new_image(sf, 1024, 1024, ptype="uint8"))
    plane = np.zeros((1024, 1024), dtype=np.uint8)
    for write in (lambda: store.setPlane(wire(plane), 0, 0, 0),
                  lambda: store.setRow(wire(plane[:1]), 0, 0, 0, 0),
                  lambda: store.setStack(wire(plane), 0, 0, 0),
                  lambda: store.setRegion(16, 0, b"\0" * 16)):
        with pytest.raises(omero.InternalException) as caught:
            write()
        assert caught.value.message == "Non-tile based writing unsupported."
        assert caught.value.serverExceptionClass == "java.lang.UnsupportedOperationException"


def test_a_second_store_cannot_lock_a_pyramid_being_written(sf: Any) -> None:
    pid = new_image(sf, 1024, 1024, ptype="uint8")
    writer = store_for(sf, pid)
    writer.setTile(b"\1" * 256 * 256, 0, 0, 0, 0, 0, 256, 256)
    with pytest.raises(omero.LockTimeout) as locked:
        store_for(sf, pid)
    assert locked.value.message.startswith("Already locked! ")
    assert locked.value.message.endswith(".pyr_lock")
    assert (locked.value.backOff, locked.value.seconds) == (15000, 0)
    writer.close()


def test_a_session_that_ends_releases_its_pyramid_lock_and_finishes_the_pyramid(
        strict: Emulator, sf: Any) -> None:
    client = omero.client(strict.host, strict.port)
    writer_sf = client.createSession("demo", "demo")
    pid = new_image(writer_sf, 1024, 1024, ptype="uint8")
    writer = store_for(writer_sf, pid)
    write_tiles(writer, {(0, 0, 0): np.full((1024, 1024), 9, dtype=np.uint8)})
    with pytest.raises(omero.LockTimeout):
        store_for(sf, pid)
    assert strict.expire_sessions(keys=[client.getSessionId()]) == 1
    reader = bind_when_built(sf, pid)
    assert read_plane(reader, 1024, "uint8")[1023, 1023] == 9
    client.__del__()


def test_a_pyramid_writer_answers_the_configured_tile_size_and_no_levels(sf: Any) -> None:
    writer = store_for(sf, new_image(sf, 1024, 1024, ptype="uint8"))
    assert list(writer.getTileSize()) == [256, 256]
    with refused(omero.ApiUsageException, "In write mode!"):
        writer.getResolutionLevels()
    writer.close()


def test_a_read_through_the_pyramid_writer_ends_its_writing(sf: Any) -> None:
    # BfPyramidPixelBuffer closes its writer on the first call that reads (byte width too).
    writer = store_for(sf, new_image(sf, 1024, 1024, ptype="uint8"))
    writer.setTile(b"\1" * 256 * 256, 0, 0, 0, 0, 0, 256, 256)
    assert writer.getByteWidth() == 1
    with refused(omero.ApiUsageException, "In read-only mode!"):
        writer.setTile(b"\1" * 256 * 256, 0, 0, 0, 256, 0, 256, 256)
    writer.close()


def test_a_pyramid_writer_closed_without_tiles_leaves_an_unreadable_pyramid(sf: Any) -> None:
    pid = new_image(sf, 1024, 1024, ptype="uint8")
    looker = store_for(sf, pid)  # the first store on a pyramid-less image is its writer
    looker.getTileSize()
    looker.close()
    with pytest.raises(omero.ResourceError) as broken:
        store_for(sf, pid)
    assert broken.value.message.startswith("Error instantiating pixel buffer: ")


def test_a_first_tile_away_from_the_origin_fails_in_the_tiff_writer(sf: Any) -> None:
    writer = store_for(sf, new_image(sf, 1024, 1024, ptype="uint8"))
    with pytest.raises(omero.InternalException) as failed:
        writer.setTile(b"\1" * 256 * 256, 0, 0, 0, 256, 0, 256, 256)
    assert failed.value.serverExceptionClass == "java.lang.NullPointerException"
    writer.close()


def test_planes_written_out_of_order_land_in_the_order_they_were_started(sf: Any) -> None:
    # The sequential TIFF writer gives each new plane the next IFD; a reader maps IFD k
    # to plane k, so channel 1 written first reads back as channel 0.
    pid = new_image(sf, 1024, 1024, ptype="uint8", size_c=2)
    rng = np.random.default_rng(3)
    planes = [rng.integers(0, 255, (1024, 1024), dtype=np.uint8) for _ in range(2)]
    writer = store_for(sf, pid)
    write_tiles(writer, {(0, 1, 0): planes[1], (0, 0, 0): planes[0]})
    writer.close()
    reader = bind_when_built(sf, pid)
    assert np.array_equal(read_plane(reader, 1024, "uint8", c=0), planes[1])
    assert np.array_equal(read_plane(reader, 1024, "uint8", c=1), planes[0])


@pytest.mark.parametrize("ptype", ["int32", "uint32", "int16", "int8"])
def test_only_uint8_and_uint16_can_be_written_as_pyramids(sf: Any, ptype: str) -> None:
    writer = store_for(sf, new_image(sf, 1024, 1024, ptype=ptype))
    assert writer.requiresPixelsPyramid()
    size = np.dtype(ptype).itemsize * 256 * 256
    with pytest.raises(omero.InternalException, match="JPEG-2000"):
        writer.setTile(b"\0" * size, 0, 0, 0, 0, 0, 256, 256)
    writer.close()


def test_tile_sizes_follow_the_buffer_kind(sf: Any) -> None:
    # RomioPixelBuffer: whole rows, at most 1 MiB; a written pyramid: the written tiles.
    romio = store_for(sf, new_image(sf, 1024, 1024, ptype="float"))
    assert list(romio.getTileSize()) == [1024, 256]
    small = store_for(sf, new_image(sf, 300, 200))
    assert list(small.getTileSize()) == [300, 200]
    with refused(omero.InternalException, "Cannot set resolution levels on a ROMIO pixel buffer."):
        small.setResolutionLevel(0)


# -- rule 3: a new pyramid is readable only once built ------------------------------------

def test_rps_tile_loop_writes_a_4096_uint16_pyramid_readable_after_the_build_delay(
        sf: Any) -> None:
    from omero.util.tiles import RPSTileLoop, TileLoopIteration

    pid = new_image(sf, 4096, 4096)
    plane = np.random.default_rng(7).integers(0, 65535, (4096, 4096), dtype=np.uint16)

    class Upload(TileLoopIteration):  # type: ignore[misc]
        def run(self, data: Any, z: int, c: int, t: int, x: int, y: int, w: int, h: int,
                count: int) -> None:
            data.setTile(wire(plane[y:y + h, x:x + w]), z, c, t, x, y, w, h)

    loop = RPSTileLoop(sf, omero.model.PixelsI(pid, False))
    assert loop.forEachTile(256, 256, Upload()) == 256

    early = sf.createRawPixelsStore()
    with pytest.raises(omero.MissingPyramidException) as missing:
        early.setPixelsId(pid, True)
    assert missing.value.pixelsID == pid and 0 < missing.value.backOff <= BUILD_DELAY_MS
    assert missing.value.message.startswith("Missing pyramid:")
    early.close()

    reader = bind_when_built(sf, pid)
    assert list(reader.getTileSize()) == [256, 256]
    levels = reader.getResolutionLevels()
    assert levels > 1
    tile = np.frombuffer(reader.getTile(0, 0, 0, 1024, 2048, 256, 256), dtype=">u2")
    assert np.array_equal(tile.reshape(256, 256), plane[2048:2304, 1024:1280])
    reader.setResolutionLevel(levels - 2)
    half = np.frombuffer(reader.getTile(0, 0, 0, 0, 0, 64, 64), dtype=">u2")
    assert np.array_equal(half.reshape(64, 64), plane[0:128:2, 0:128:2])


# -- clients we did not write ----------------------------------------------------------------

def test_blitzgateway_creates_a_small_image_from_numpy(strict: Emulator) -> None:
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=strict.host, port=strict.port)
    assert conn.connect()
    try:
        planes = [np.full((48, 40), 100 * (i + 1), dtype=np.uint16) for i in range(3)]
        image = conn.createImageFromNumpySeq(iter(planes), "numpy", sizeZ=1, sizeC=3,
                                             sizeT=1)
        pixels = conn.getObject("Image", image.getId()).getPrimaryPixels()
        assert [int(pixels.getPlane(0, c, 0)[0, 0]) for c in range(3)] == [100, 200, 300]
    finally:
        conn.close()


# -- the pixel file survives a restart (last: it restarts the module's emulator) -----------

def test_the_pixel_file_survives_a_restart(strict: Emulator) -> None:
    client = omero.client(strict.host, strict.port)
    sf = client.createSession("demo", "demo")
    pid = new_image(sf, 16, 16)
    store_for(sf, pid).setPlane(b"\0\1" * 256, 0, 0, 0)
    client.closeSession()
    strict.restart()
    client = omero.client(strict.host, strict.port)
    try:
        sf = client.createSession("demo", "demo")
        with refused(omero.ApiUsageException, "Write-method not permitted."):
            store_for(sf, pid).setPlane(b"\0\1" * 256, 0, 0, 0)
    finally:
        client.closeSession()

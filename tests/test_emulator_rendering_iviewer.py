"""What OMERO.iviewer asks of the rendering services, over Ice with omero-py's BlitzGateway.

The calls are the ones OMERO.web's views make (``ImageWrapper.setActiveChannels``,
``renderJpegRegion``, ``saveDefaults``, ``getRenderingDefs``, ``getHistogram``,
``ITypes.allEnumerations``, ``IScript.getScriptsByMimetype``), and every assertion is a
pixel or a stored fact. One small two-channel image made here (in the read-annotate
group, so a second user can keep settings of their own) and the seed's pyramid.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import omero
import pytest
from PIL import Image

from cellprofiler_omero.emulator import Emulator
from cellprofiler_omero.emulator.services.enums_scripts import LUTS

SHARED_GROUP = 5
WIDTH, HEIGHT = 128, 64


def _planes() -> list[np.ndarray]:
    ramp = np.tile((np.arange(WIDTH) * 2).astype(np.uint8), (HEIGHT, 1))  # 0..254
    halves = np.full((HEIGHT, WIDTH), 50, dtype=np.uint8)
    halves[:, WIDTH // 2:] = 200
    return [ramp, halves]


def _connect(emulator: Emulator, user: str) -> Any:
    from omero.gateway import BlitzGateway

    conn = BlitzGateway(user, user, host=emulator.host, port=emulator.port)
    assert conn.connect(), conn.getLastError()
    conn.setGroupForSession(SHARED_GROUP)
    return conn


@pytest.fixture(scope="module")
def conns(emulator: Emulator) -> Iterator[dict[str, Any]]:
    made = {"demo": _connect(emulator, "demo"), "other": _connect(emulator, "other")}
    yield made
    for conn in made.values():
        conn.close()


@pytest.fixture(scope="module")
def image_id(conns: dict[str, Any]) -> int:
    image = conns["demo"].createImageFromNumpySeq(iter(_planes()), "rendering-iviewer",
                                                  sizeC=2)
    return int(image.getId())


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.int32)


def _render(conn: Any, image_id: int, **active: Any) -> np.ndarray:
    image = conn.getObject("Image", image_id)
    image.set_active_channels(**active)
    return _pixels(image.renderJpegRegion(0, 0, 0, 0, WIDTH, HEIGHT))


def test_enumerations_and_luts_are_those_of_a_fresh_server(conns: dict[str, Any]) -> None:
    conn = conns["demo"]
    types = conn.getTypesService()
    assert [e.value.val for e in types.allEnumerations("Family")] == [
        "linear", "polynomial", "exponential", "logarithmic"]
    assert {e.value.val for e in types.allEnumerations("omero.model.RenderingModel")} == {
        "rgb", "greyscale"}
    assert "uint16" in [e.value.val for e in types.allEnumerations("PixelsTypeI")]
    with pytest.raises(omero.ApiUsageException) as refused:
        types.allEnumerations("NoSuchEnum")
    assert refused.value.message == "NoSuchEnum does not specify a valid class."

    luts = {f.name.val: f for f in conn.getScriptService().getScriptsByMimetype("text/x-lut")}
    assert {"fire.lut", "grays.lut"} <= set(luts)
    assert luts["fire.lut"].path.val == "/luts/"
    assert conn.getScriptService().getScriptsByMimetype("text/x-python") == []
    # The file holds ImageJ's binary LUT: 256 reds, 256 greens, 256 blues.
    store = conn.c.sf.createRawFileStore()
    try:
        store.setFileId(luts["fire.lut"].id.val)
        raw = np.frombuffer(store.read(0, 768), dtype=np.uint8).reshape(3, 256).T
    finally:
        store.close()
    assert (raw == LUTS["fire.lut"][1]).all()
    assert raw[0].tolist() == [0, 0, 0] and raw[255].tolist() == [255, 255, 255]


def test_window_reverse_and_lut_change_the_rendered_pixels(conns: dict[str, Any],
                                                          image_id: int) -> None:
    conn = conns["demo"]
    red = _render(conn, image_id, channels=[1], windows=[[0, 254]], colors=["FF0000"],
                  invertMaps=[False])
    # Channel 1 is a ramp 0..254 along x, mapped linearly onto red.
    assert abs(red[10, 0, 0]) <= 6 and red[10, -1, 0] >= 248
    assert abs(red[10, 64, 0] - 128) <= 6 and red[..., 1:].max() <= 12
    narrow = _render(conn, image_id, channels=[1], windows=[[0, 127]], colors=["FF0000"],
                     invertMaps=[False])
    assert narrow[10, 64, 0] >= 248  # value 128 is past the window's end: saturated
    reverse = _render(conn, image_id, channels=[1], windows=[[0, 254]], colors=["FF0000"],
                      invertMaps=[True])
    assert reverse[10, 0, 0] >= 248 and reverse[10, -1, 0] <= 6
    fire = _render(conn, image_id, channels=[1], windows=[[0, 254]], colors=["fire.lut"],
                   invertMaps=[False])
    expected = LUTS["fire.lut"][1][128].astype(np.int32)  # value 128 of 254 → entry 128
    assert np.abs(fire[10, 64] - expected).max() <= 12
    assert np.abs(fire[10, 64] - red[10, 64]).max() > 40
    image = conn.getObject("Image", image_id)
    image.set_active_channels([1], colors=["fire.lut"])
    assert image.getChannels()[0].getLut() == "fire.lut"
    assert not image.getChannels()[0].isInverted()


def test_saved_settings_are_the_users_and_come_back(conns: dict[str, Any], image_id: int
                                                    ) -> None:
    demo, other = conns["demo"], conns["other"]
    image = demo.getObject("Image", image_id)
    image.set_active_channels([1, 2], windows=[[10, 100], [0, 255]],
                              colors=["00FF00", "grays.lut"], invertMaps=[True, False])
    image.saveDefaults()

    again = demo.getObject("Image", image_id)
    first, second = again.getChannels()
    assert (first.getWindowStart(), first.getWindowEnd()) == (10, 100)
    assert first.getColor().getHtml() == "00FF00" and first.isInverted()
    assert second.getLut() == "grays.lut"
    [rdef] = again.getAllRenderingDefs()
    assert rdef["owner"]["id"] == demo.getUserId()
    assert rdef["c"][0]["inverted"] and (rdef["c"][0]["start"], rdef["c"][0]["end"]) == (
        10, 100)
    assert rdef["c"][1]["lut"] == "grays.lut"

    # Another user starts from the owner's settings and saves a copy of their own.
    theirs = other.getObject("Image", image_id)
    assert theirs.getChannels()[0].getWindowEnd() == 100
    theirs.set_active_channels([1], windows=[[0, 50]], colors=["0000FF"])
    theirs.saveDefaults()
    owners = sorted(r["owner"]["id"] for r in demo.getObject(
        "Image", image_id).getAllRenderingDefs())
    assert owners == sorted([demo.getUserId(), other.getUserId()])
    assert demo.getObject("Image", image_id).getChannels()[0].getWindowEnd() == 100
    assert other.getObject("Image", image_id).getChannels()[0].getWindowEnd() == 50

    # The thumbnail follows the saved settings: demo's shows green (channel 1
    # reversed) plus grey, other's only blue.
    thumb = _pixels(demo.getObject("Image", image_id).getThumbnail(size=(64,)))
    assert thumb[..., 1].mean() > thumb[..., 2].mean()
    theirs_thumb = _pixels(other.getObject("Image", image_id).getThumbnail(size=(64,)))
    assert theirs_thumb[..., 2].mean() > 3 * max(theirs_thumb[..., 0].mean(), 1)


def test_histogram_counts_the_plane_in_equal_bins(conns: dict[str, Any], image_id: int
                                                  ) -> None:
    image = conns["demo"].getObject("Image", image_id)
    hist = image.getHistogram([0, 1], 4, globalRange=False)
    # Channel 0: 0..254 step 2 along x: 128 values, 32 per quarter of 0..254.
    assert hist[0] == [32 * HEIGHT] * 4
    # Channel 1: 50 and 200 over its own range: the first and the last bin.
    assert hist[1] == [WIDTH // 2 * HEIGHT, 0, 0, WIDTH // 2 * HEIGHT]


def test_pyramid_tiles_are_tiles_of_their_resolution_level(
        conns: dict[str, Any], seeded: dict[str, Any]) -> None:
    conn = conns["demo"]
    conn.setGroupForSession(3)
    try:
        image = conn.getObject("Image", seeded["large"])
        image.set_active_channels([1], windows=[[0, 65535]], colors=["FFFFFF"])
        re = image._re
        levels = re.getResolutionLevels()
        sizes = [(d.sizeX, d.sizeY) for d in re.getResolutionDescriptions()]
        assert levels == len(sizes) > 2 and sizes[0] == (image.getSizeX(), image.getSizeY())
        assert sizes[1] == (sizes[0][0] // 2, sizes[0][1] // 2)
        assert re.getTileSize() == [256, 256]
        assert image.getZoomLevelScaling()[1] == 0.5

        tile = _pixels(image.renderJpegRegion(0, 0, 256, 256, 256, 256, level=levels - 2))
        assert tile.shape == (256, 256, 3)
        # The same region read from the level's raw pixels, windowed the same way.
        store = conn.c.sf.createRawPixelsStore()
        try:
            store.setPixelsId(image.getPixelsId(), True)
            store.setResolutionLevel(levels - 2)
            raw = np.frombuffer(store.getTile(0, 0, 0, 256, 256, 256, 256),
                                dtype=">u2").reshape(256, 256)
        finally:
            store.close()
        expected = raw.astype(np.float64) / 65535 * 255
        assert raw.std() > 0
        assert np.abs(tile[..., 0] - expected).mean() < 3

        # The histogram of a pyramid counts the largest level within the plane limits
        # (the 2048 threshold): the half-size level here.
        assert sum(image.getHistogram([0], 8)[0]) == sizes[1][0] * sizes[1][1]

        # An edge tile is cut to the level; a level Bio-Formats does not have is refused.
        w, h = sizes[1]
        edge = _pixels(image.renderJpegRegion(0, 0, w - 100, h - 60, 256, 256,
                                              level=levels - 2))
        assert edge.shape == (60, 100, 3)
        with pytest.raises(omero.InternalException) as refused:
            re.setResolutionLevel(2 * levels)
        assert refused.value.serverExceptionClass == "java.lang.IllegalArgumentException"
    finally:
        conn.setGroupForSession(SHARED_GROUP)


def test_a_plain_image_has_one_level_and_refuses_others(conns: dict[str, Any],
                                                        image_id: int) -> None:
    image = conns["demo"].getObject("Image", image_id)
    image.set_active_channels([1])
    re = image._re
    assert re.getResolutionLevels() == 1 and image.getZoomLevelScaling() is None
    with pytest.raises(omero.InternalException) as refused:
        re.setResolutionLevel(0)
    assert refused.value.message == "Cannot set resolution levels on a ROMIO pixel buffer."
    # Before load() the engine refuses channel calls, as RenderingBean does; after it,
    # it answers from the stored settings.
    stored = conns["demo"].getPixelsService().retrieveRndSettings(image.getPixelsId())
    fresh = conns["demo"].c.sf.createRenderingEngine()
    try:
        fresh.lookupPixels(image.getPixelsId())
        assert fresh.lookupRenderingDef(image.getPixelsId())
        with pytest.raises(omero.ApiUsageException):
            fresh.getChannelWindowStart(0)
        fresh.load()
        assert fresh.getRenderingDefId() == stored.id.val
        assert fresh.getChannelWindowStart(0) == stored.getChannelBinding(0).inputStart.val
    finally:
        fresh.close()


def test_settings_paste_onto_compatible_images_and_reset(conns: dict[str, Any],
                                                         image_id: int) -> None:
    demo = conns["demo"]
    twin = int(demo.createImageFromNumpySeq(iter(_planes()), "twin", sizeC=2).getId())
    single = int(demo.createImageFromNumpySeq(iter(_planes()[:1]), "single").getId())
    source = demo.getObject("Image", image_id)
    source.set_active_channels([1, 2], windows=[[5, 60], [0, 255]],
                               colors=["FF00FF", "00FFFF"], invertMaps=[False, False])
    source.saveDefaults()

    # What webgateway's copy/paste (and iviewer's "Save to All") asks for.
    pasted = demo.applySettingsToSet(image_id, "Image", [twin, single])
    assert pasted[True] == [twin] and pasted[False] == [single]
    first = demo.getObject("Image", twin).getChannels()[0]
    assert (first.getWindowStart(), first.getWindowEnd()) == (5, 60)
    assert first.getColor().getHtml() == "FF00FF"

    reset = demo.getRenderingSettingsService().resetDefaultsInSet("Image", [twin])
    assert reset == [twin]
    first = demo.getObject("Image", twin).getChannels()[0]
    assert (first.getWindowStart(), first.getWindowEnd()) == (0, 254)

"""Default rendering settings as ome/omero-server's RenderingSettingsImpl.resetDefaults
makes them: each window is the channel's StatsInfo range, else the pixel type's range
(StatsFactory.initPixelsRange), and only the first three channels are active."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def _image(conn: Any, planes: list[np.ndarray], name: str) -> Any:
    """An image of one z and t and ``len(planes)`` channels, made as omero-py makes it
    (``createImageFromNumpySeq`` saves each channel's min and max as its StatsInfo)."""
    def each() -> Iterator[np.ndarray]:
        yield from planes

    image = conn.createImageFromNumpySeq(each(), name, 1, len(planes), 1)
    return conn.getObject("Image", image.getId())


def _windows(image: Any) -> list[tuple[float, float, bool]]:
    return [(ch.getWindowStart(), ch.getWindowEnd(), ch.isActive())
            for ch in image.getChannels()]


def test_default_windows_are_the_stats_range_else_the_pixel_types_and_three_are_active(
        blitz: Any) -> None:
    conn = blitz("demo")
    ramp = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) + 100
    four = _image(conn, [ramp, ramp * 2, ramp + 7, ramp], "four uint16 channels")
    # StatsInfo globalMin..globalMax; the fourth channel is not active.
    assert _windows(four) == [(100.0, 1123.0, True), (200.0, 2246.0, True),
                              (107.0, 1130.0, True), (100.0, 1123.0, False)]

    flat = np.full((16, 16), 42, dtype=np.uint8)
    uint8 = _image(conn, [flat], "one flat uint8 channel")
    # globalMin == globalMax: the type's range, 0..255.
    assert _windows(uint8) == [(0.0, 255.0, True)]

    almost = np.full((16, 16), 1.0, dtype=np.float32)
    almost[0, 0] = 1.000001
    floats = _image(conn, [almost], "a float channel of one value")
    # A range narrower than RenderingSettingsImpl.EPSILON (1e-5) is no range; a float's
    # range is Bio-Formats' defaultMinMax (a Java int's), as the engine reports it.
    assert _windows(floats) == [(-2.0**31, 2.0**31 - 1, True)]
    engine = conn.createRenderingEngine()
    try:
        engine.lookupPixels(floats.getPrimaryPixels().getId())
        engine.lookupRenderingDef(floats.getPrimaryPixels().getId())
        engine.load()
        assert (engine.getPixelsTypeLowerBound(0), engine.getPixelsTypeUpperBound(0)) == (
            -2.0**31, 2.0**31 - 1)
    finally:
        engine.close()

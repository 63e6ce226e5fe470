"""Tiling plans under the message-size limit, big-endian decoding, and plane assembly.

Transports fetch tiles; this module decides which, and turns their bytes into one
preallocated native array without intermediate copies (``numpy.frombuffer`` and an
in-place byte swap, never ``struct.unpack``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cellprofiler_omero.core.model import PixelType, Region


@dataclass(frozen=True)
class Tile:
    """One tile of a plane: the region to fetch and where it lands in the output."""

    region: Region
    out_x: int
    out_y: int


def plan_tiles(region: Region, bytes_per_pixel: int, max_tile_bytes: int,
               tile_size: tuple[int, int] | None = None) -> list[Tile]:
    """Tiles covering ``region`` with none over ``max_tile_bytes``.

    Whole rows are preferred (one contiguous strip per request, the cheapest shape for
    every OMERO pixel buffer); when even one row is too large, rows are split into
    column blocks. With a server ``tile_size`` for pyramids, strips are aligned to it.
    """
    if max_tile_bytes < bytes_per_pixel:
        raise ValueError("max_tile_bytes must hold at least one pixel")
    row_bytes = region.w * bytes_per_pixel
    tiles: list[Tile] = []
    if row_bytes <= max_tile_bytes:
        rows = max(1, max_tile_bytes // row_bytes)
        if tile_size is not None and tile_size[1] > 0 and rows >= tile_size[1]:
            rows -= rows % tile_size[1]
        for y in range(0, region.h, rows):
            h = min(rows, region.h - y)
            tiles.append(Tile(Region(region.x, region.y + y, region.w, h), 0, y))
        return tiles
    cols = max(1, max_tile_bytes // bytes_per_pixel)
    if tile_size is not None and tile_size[0] > 0 and cols >= tile_size[0]:
        cols -= cols % tile_size[0]
    for y in range(region.h):
        for x in range(0, region.w, cols):
            w = min(cols, region.w - x)
            tiles.append(Tile(Region(region.x + x, region.y + y, w, 1), x, y))
    return tiles


def decode_into(out: np.ndarray, data: bytes | bytearray | memoryview, pixel_type: PixelType,
                tile: Tile) -> None:
    """Decode one tile's big-endian bytes straight into ``out`` (a 2-D native plane)."""
    r = tile.region
    expected = r.w * r.h * pixel_type.bytes_per_pixel
    if len(data) != expected:
        raise ValueError(
            f"A {r.w}×{r.h} {pixel_type.value} tile should be {expected} bytes, "
            f"got {len(data)}.")
    wire = np.frombuffer(data, dtype=pixel_type.wire_dtype).reshape(r.h, r.w)
    target = out[tile.out_y:tile.out_y + r.h, tile.out_x:tile.out_x + r.w]
    if pixel_type is PixelType.BIT:
        np.not_equal(wire, 0, out=target)
    else:
        # Assigning a big-endian view to a native array swaps bytes during the copy.
        target[...] = wire


def decode(data: bytes, pixel_type: PixelType, w: int, h: int) -> np.ndarray:
    """A native ``(h, w)`` array from one tile's big-endian bytes."""
    out = np.empty((h, w), dtype=pixel_type.dtype)
    decode_into(out, data, pixel_type, Tile(Region(0, 0, w, h), 0, 0))
    return out


def encode(plane: np.ndarray, pixel_type: PixelType) -> np.ndarray:
    """A plane's pixels as OMERO stores them: a C-contiguous big-endian array.

    Ice sends any buffer as a byte sequence (as omero-py's ``createImageFromNumpySeq``
    does with its arrays), so this is the only copy made: the byte swap itself, or none
    when the plane already is contiguous and big-endian. ``bytes(...)`` of it gives the
    bytes where a ``bytes`` object is needed.
    """
    if pixel_type is PixelType.BIT:
        return np.ascontiguousarray(plane, dtype=np.uint8)
    return np.ascontiguousarray(plane, dtype=pixel_type.wire_dtype)


def iter_strips(height: int, width: int, bytes_per_pixel: int, max_bytes: int
                ) -> Iterator[tuple[int, int]]:
    """``(y, h)`` row strips of a plane for writing, each under ``max_bytes``."""
    rows = max(1, max_bytes // max(1, width * bytes_per_pixel))
    for y in range(0, height, rows):
        yield y, min(rows, height - y)


def rps_tile_loop(size_x: int, size_y: int, size_z: int, size_c: int, size_t: int,
                  tile_w: int, tile_h: int) -> Iterator[tuple[int, int, int, int, int, int, int]]:
    """``(z, c, t, x, y, w, h)`` of every tile, in omero-py ``RPSTileLoop``'s order.

    A server's pyramid writer takes tiles sequentially: t, then c, then z, then rows
    of tiles, then columns; the last row and column are cut at the plane's edge.
    """
    for t in range(size_t):
        for c in range(size_c):
            for z in range(size_z):
                for y in range(0, size_y, tile_h):
                    for x in range(0, size_x, tile_w):
                        yield z, c, t, x, y, min(tile_w, size_x - x), min(tile_h, size_y - y)

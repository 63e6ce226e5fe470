"""Pixel data on disk: one raw big-endian file per image and resolution level.

A level file holds every plane in OMERO's XYZCT order (z fastest), i.e. a C-order
array shaped ``(T, C, Z, Y, X)``, stored big-endian so that a tile is served with a
slice and ``tobytes()`` and never decoded. ``bit`` images hold one byte (0/1) per
pixel. Files are memory-mapped, so serving a 16384² plane does not load it.
Level 0 is full resolution; each further level halves X and Y (the order of
``getResolutionDescriptions``; RawPixelsStore numbers levels the other way round).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WIRE_DTYPES: dict[str, str] = {
    "int8": "i1", "uint8": "u1", "int16": ">i2", "uint16": ">u2", "int32": ">i4",
    "uint32": ">u4", "float": ">f4", "double": ">f8", "bit": "u1",
}
BIT_SIZES: dict[str, int] = {
    "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32,
    "float": 32, "double": 64, "bit": 1, "complex": 64, "double-complex": 128,
}


@dataclass(frozen=True)
class PixelsShape:
    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    pixel_type: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(WIRE_DTYPES[self.pixel_type])

    @property
    def plane_bytes(self) -> int:
        return self.size_x * self.size_y * self.dtype.itemsize


#: Pixel types an OMERO pyramid (JPEG-2000 tiles in a TIFF) can hold.
PYRAMID_TYPES = frozenset({"uint8", "uint16"})


def requires_pyramid(size_x: int, size_y: int, pixel_type: str, max_plane_width: int,
                     max_plane_height: int, float_override: bool = True) -> bool:
    """Whether a server stores this plane size as a pyramid.

    As ``PixelsService.requiresPixelsPyramid``: the plane's area against
    ``max_plane_width × max_plane_height``; floating-point types are exempt while
    ``max_plane_float_override`` is on (its default). The pixel type is not checked
    here: writing an integer type other than uint8/uint16 fails later, in the writer.
    """
    if float_override and pixel_type in ("float", "double"):
        return False
    return size_x * size_y > max_plane_width * max_plane_height


def pyramid_levels(size_x: int, size_y: int, pyramid: bool, tile: int = 256
                   ) -> list[tuple[int, int]]:
    """Level sizes, full first; a pyramid halves until a level fits one tile."""
    levels = [(size_x, size_y)]
    if not pyramid:
        return levels
    x, y = size_x, size_y
    while max(x, y) > tile:
        x, y = max(1, x // 2), max(1, y // 2)
        levels.append((x, y))
    return levels


class PixelFiles:
    """Creates, reads and writes the per-image pixel files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._maps: dict[tuple[int, int, str], np.memmap] = {}
        self._lock = threading.Lock()

    def path(self, image_id: int, level: int = 0) -> Path:
        return self.root / str(image_id) / f"level{level}.raw"

    def create(self, image_id: int, shape: PixelsShape, levels: Sequence[tuple[int, int]]
               ) -> None:
        """Allocate (sparse, zero-filled) files for every level."""
        folder = self.root / str(image_id)
        folder.mkdir(parents=True, exist_ok=True)
        per_plane_count = shape.size_z * shape.size_c * shape.size_t
        for level, (x, y) in enumerate(levels):
            size = x * y * shape.dtype.itemsize * per_plane_count
            with self.path(image_id, level).open("wb") as handle:
                if size:
                    handle.truncate(size)

    def remove(self, image_id: int) -> None:
        with self._lock:
            for key in [k for k in self._maps if k[0] == image_id]:
                del self._maps[key]
        shutil.rmtree(self.root / str(image_id), ignore_errors=True)

    def array(self, image_id: int, shape: PixelsShape, level: int,
              levels: Sequence[tuple[int, int]], *, writable: bool = False) -> np.memmap:
        """The level as a big-endian ``(T, C, Z, Y, X)`` memory map."""
        mode = "r+" if writable else "r"
        key = (image_id, level, mode)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                return cached
            x, y = levels[level]
            arr: np.memmap = np.memmap(str(self.path(image_id, level)), dtype=shape.dtype,
                                       mode=mode,  # type: ignore[call-overload]
                            shape=(shape.size_t, shape.size_c, shape.size_z, y, x))
            self._maps[key] = arr
            return arr

    def read(self, image_id: int, shape: PixelsShape, levels: Sequence[tuple[int, int]], *,
             z: int, c: int, t: int, x: int, y: int, w: int, h: int, level: int = 0) -> bytes:
        """The big-endian bytes of one tile (row-major, no header)."""
        arr = self.array(image_id, shape, level, levels)
        return arr[t, c, z, y:y + h, x:x + w].tobytes()

    def read_planes(self, image_id: int, shape: PixelsShape, levels: Sequence[tuple[int, int]],
                    *, z: Sequence[int], c: int, t: int, level: int = 0) -> bytes:
        arr = self.array(image_id, shape, level, levels)
        return arr[t, c, list(z)].tobytes()

    def write(self, image_id: int, shape: PixelsShape, levels: Sequence[tuple[int, int]],
              data: bytes, *, z: int, c: int, t: int, x: int, y: int, w: int, h: int,
              level: int = 0) -> None:
        arr = self.array(image_id, shape, level, levels, writable=True)
        tile = np.frombuffer(data, dtype=shape.dtype)
        if tile.size != w * h:
            raise ValueError(f"expected {w * h} pixels, got {tile.size}")
        arr[t, c, z, y:y + h, x:x + w] = tile.reshape(h, w)

    def write_region(self, image_id: int, shape: PixelsShape,
                     levels: Sequence[tuple[int, int]], data: bytes, offset: int) -> None:
        """Bytes at a byte offset of the full-resolution file (OMERO's XYZCT layout)."""
        arr = self.array(image_id, shape, 0, levels, writable=True)
        raw = arr.reshape(-1).view(np.uint8)
        if offset < 0 or offset + len(data) > raw.size:
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit "
                             f"the {raw.size}-byte pixel file")
        raw[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def write_array(self, image_id: int, shape: PixelsShape, levels: Sequence[tuple[int, int]],
                    pixels: np.ndarray) -> None:
        """Write a whole native ``(T, C, Z, Y, X)`` array, then compute the pyramid."""
        arr = self.array(image_id, shape, 0, levels, writable=True)
        arr[...] = pixels.astype(shape.dtype, copy=False)
        arr.flush()
        self.build_pyramid(image_id, shape, levels)

    def flush(self, image_id: int) -> None:
        with self._lock:
            for key, arr in self._maps.items():
                if key[0] == image_id and key[2] == "r+":
                    arr.flush()

    def build_pyramid(self, image_id: int, shape: PixelsShape,
                      levels: Sequence[tuple[int, int]]) -> None:
        """Compute each smaller level from the one above by 2×2 striding, plane by plane."""
        for level in range(1, len(levels)):
            src = self.array(image_id, shape, level - 1, levels)
            dst = self.array(image_id, shape, level, levels, writable=True)
            x, y = levels[level]
            for t in range(shape.size_t):
                for c in range(shape.size_c):
                    for z in range(shape.size_z):
                        # Row blocks bound the memory a 16384² plane needs.
                        for row in range(0, y, 1024):
                            rows = min(1024, y - row)
                            dst[t, c, z, row:row + rows] = src[t, c, z,
                                                               2 * row:2 * (row + rows):2,
                                                               0:2 * x:2][:rows, :x]
            dst.flush()

"""IPixels (create images, pixel descriptions) and RawPixelsStore (read and write pixels).

Resolution levels follow RawPixelsStore's numbering: ``setResolutionLevel(n - 1)`` is
full resolution and 0 the smallest, while ``getResolutionDescriptions()`` lists
them largest first, as a real server does.
"""

from __future__ import annotations

import threading
from typing import Any

import Ice
import omero
import omero.api
from omero.rtypes import rlong, unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, security_violation, servant
from cellprofiler_omero.emulator.pixels import BIT_SIZES, PixelsShape
from cellprofiler_omero.emulator.services.common import SessionServant, StatefulServant
from cellprofiler_omero.emulator.store import Obj

#: Largest answer the emulator sends, as a real server's Ice.MessageSizeMax.
MESSAGE_LIMIT_BYTES = 250_000 * 1024 - 64 * 1024


def shape_of(image: Obj) -> PixelsShape:
    d = image.data
    return PixelsShape(d["sizeX"], d["sizeY"], d["sizeZ"], d["sizeC"], d["sizeT"],
                       d["pixelsType"])


def levels_of(image: Obj) -> list[tuple[int, int]]:
    levels = image.data.get("levels") or [[image.data["sizeX"], image.data["sizeY"]]]
    return [(int(x), int(y)) for x, y in levels]


@servant(omero.api.IPixels)
class PixelsServiceI(SessionServant):
    """IPixels: create images and describe their pixels."""

    def createImage(self, size_x: int, size_y: int, size_z: int, size_t: int,
                    channels: list[int], pixels_type: Any, name: str, description: str,
                    current: Ice.Current) -> Any:
        caller = self.caller(current)
        ptype = unwrap(pixels_type.value) if pixels_type is not None else None
        if ptype is None and pixels_type is not None and pixels_type.id is not None:
            ptype = list(BIT_SIZES)[unwrap(pixels_type.id) - 1]
        if ptype not in BIT_SIZES or ptype in ("complex", "double-complex"):
            raise api_usage(f"Pixels type {ptype!r} cannot be created here.")
        if min(size_x, size_y, size_z, size_t) < 1 or not channels:
            raise api_usage("Every size must be at least 1 and there must be a channel.")
        chans = [{"name": str(w), "emission": float(w) if w else None,
                  "color": [255, 255, 255, 255]} for w in channels]
        image = self.ctx.create_image(
            name=name, description=description or "", owner_id=caller.user.id,
            group_id=self.write_group(caller), size_x=size_x, size_y=size_y, size_z=size_z,
            size_c=len(channels), size_t=size_t, pixel_type=ptype, channels=chans,
            complete=False)
        return rlong(image.id)

    def retrievePixDescription(self, pixels_id: int, current: Ice.Current) -> Any:
        caller = self.caller(current)
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if not self.visible(caller, image):
            raise api_usage(f"No pixels {pixels_id}.")
        assert image is not None
        return modelmap.pixels(self.ctx.store, caller.user, image)

    def setChannelGlobalMinMax(self, pixels_id: int, channel: int, minimum: float,
                               maximum: float, current: Ice.Current) -> None:
        caller = self.caller(current)
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if image is None or not self.visible(caller, image):
            raise api_usage(f"No pixels {pixels_id}.")
        if image.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation("Only the owner can change channel statistics.")
        data = dict(image.data)
        chans = [dict(c) for c in data["channels"]]
        chans[channel]["min"], chans[channel]["max"] = float(minimum), float(maximum)
        data["channels"] = chans
        self.ctx.store.update(image.id, data=data)

    def getAllEnumerations(self, enum_class: str, current: Ice.Current) -> list[Any]:
        if enum_class.rsplit(".", 1)[-1] == "PixelsType":
            return [modelmap.pixels_type(n) for n in BIT_SIZES]
        if enum_class.rsplit(".", 1)[-1] == "DimensionOrder":
            order = omero.model.DimensionOrderI(rlong(1), True)
            order.value = omero.rtypes.rstring("XYZCT")
            return [order]
        return []

    def getEnumeration(self, enum_class: str, value: str, current: Ice.Current) -> Any:
        for item in self.getAllEnumerations(enum_class, current):
            if unwrap(item.value) == value:
                return item
        raise api_usage(f"No {enum_class} {value!r}.")

    def getBitDepth(self, pixels_type: Any, current: Ice.Current) -> int:
        return BIT_SIZES[unwrap(pixels_type.value)]


@servant(omero.api.RawPixelsStore)
class RawPixelsStoreI(StatefulServant):
    """RawPixelsStore: tiles, planes and stacks of one image, at any resolution level."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.image: Obj | None = None
        self.level = 0  # RawPixelsStore numbering (n-1 = full)
        self._lock = threading.Lock()

    # -- binding ---------------------------------------------------------------------------

    def setPixelsId(self, pixels_id: int, bypass: bool, current: Ice.Current) -> None:
        caller = self.caller(current)
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if image is None or not self.visible(caller, image):
            # A real server answers with a security violation for others' private images.
            if image is not None:
                raise security_violation(f"Cannot read Pixels:{pixels_id}.")
            raise api_usage(f"Pixels:{pixels_id} does not exist.")
        self.image = image
        self.level = len(levels_of(image)) - 1

    def _image(self) -> Obj:
        if self.image is None:
            raise api_usage("Call setPixelsId first.")
        return self.image

    def _full(self) -> int:
        return len(levels_of(self._image())) - 1

    def _level0(self) -> int:
        """The storage level (0 = full) of the current RawPixelsStore level."""
        return self._full() - self.level

    def getPixelsId(self, current: Ice.Current) -> int:
        return modelmap.pixels_id(self._image().id)

    def getResolutionLevels(self, current: Ice.Current) -> int:
        return len(levels_of(self._image()))

    def getResolutionLevel(self, current: Ice.Current) -> int:
        return self.level

    def setResolutionLevel(self, level: int, current: Ice.Current) -> None:
        if not 0 <= level <= self._full():
            raise api_usage(f"Resolution level {level} does not exist "
                            f"(0..{self._full()}).")
        self.level = level

    def getResolutionDescriptions(self, current: Ice.Current) -> list[Any]:
        return [omero.api.ResolutionDescription(sizeX=x, sizeY=y)
                for x, y in levels_of(self._image())]

    def requiresPixelsPyramid(self, current: Ice.Current) -> bool:
        return len(levels_of(self._image())) > 1

    def getTileSize(self, current: Ice.Current) -> list[int]:
        image = self._image()
        if len(levels_of(image)) > 1:
            return [256, 256]
        shape = shape_of(image)
        rows = max(1, min(shape.size_y, (1 << 20) // max(1, shape.size_x *
                                                           shape.dtype.itemsize)))
        return [shape.size_x, rows]

    # -- sizes -------------------------------------------------------------------------------

    def _size(self) -> tuple[int, int]:
        return levels_of(self._image())[self._level0()]

    def getByteWidth(self, current: Ice.Current) -> int:
        return shape_of(self._image()).dtype.itemsize

    def isSigned(self, current: Ice.Current) -> bool:
        return shape_of(self._image()).pixel_type in ("int8", "int16", "int32", "float",
                                                      "double")

    def isFloat(self, current: Ice.Current) -> bool:
        return shape_of(self._image()).pixel_type in ("float", "double")

    def getPlaneSize(self, current: Ice.Current) -> int:
        x, y = self._size()
        return x * y * self.getByteWidth(current)

    def getRowSize(self, current: Ice.Current) -> int:
        return self._size()[0] * self.getByteWidth(current)

    def getStackSize(self, current: Ice.Current) -> int:
        return self.getPlaneSize(current) * shape_of(self._image()).size_z

    def getTimepointSize(self, current: Ice.Current) -> int:
        return self.getStackSize(current) * shape_of(self._image()).size_c

    def getTotalSize(self, current: Ice.Current) -> int:
        return self.getTimepointSize(current) * shape_of(self._image()).size_t

    # -- reading ---------------------------------------------------------------------------

    def _check(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> None:
        shape = shape_of(self._image())
        sx, sy = self._size()
        if not (0 <= z < shape.size_z and 0 <= c < shape.size_c and 0 <= t < shape.size_t):
            raise api_usage(f"Plane z={z} c={c} t={t} is outside the image "
                            f"({shape.size_z}×{shape.size_c}×{shape.size_t}).")
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > sx or y + h > sy:
            raise api_usage(f"Tile x={x} y={y} w={w} h={h} is outside the {sx}×{sy} plane.")
        if w * h * shape.dtype.itemsize > MESSAGE_LIMIT_BYTES:
            raise api_usage(
                f"A {w}×{h} tile is {w * h * shape.dtype.itemsize} bytes, over the "
                f"{MESSAGE_LIMIT_BYTES}-byte message limit; read it in smaller tiles.")

    def _tile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int) -> bytes:
        self._check(z, c, t, x, y, w, h)
        image = self._image()
        return self.ctx.pixels.read(image.id, shape_of(image), levels_of(image), z=z, c=c,
                                    t=t, x=x, y=y, w=w, h=h, level=self._level0())

    def getTile(self, z: int, c: int, t: int, x: int, y: int, w: int, h: int,
                current: Ice.Current) -> bytes:
        return self._tile(z, c, t, x, y, w, h)

    def getPlane(self, z: int, c: int, t: int, current: Ice.Current) -> bytes:
        sx, sy = self._size()
        return self._tile(z, c, t, 0, 0, sx, sy)

    def getRow(self, y: int, z: int, c: int, t: int, current: Ice.Current) -> bytes:
        sx, _ = self._size()
        return self._tile(z, c, t, 0, y, sx, 1)

    def getCol(self, x: int, z: int, c: int, t: int, current: Ice.Current) -> bytes:
        _, sy = self._size()
        return self._tile(z, c, t, x, 0, 1, sy)

    def getStack(self, c: int, t: int, current: Ice.Current) -> bytes:
        image = self._image()
        shape = shape_of(image)
        sx, sy = self._size()
        if sx * sy * shape.size_z * shape.dtype.itemsize > MESSAGE_LIMIT_BYTES:
            raise api_usage("The stack is over the message limit; read planes instead.")
        return b"".join(self._tile(z, c, t, 0, 0, sx, sy) for z in range(shape.size_z))

    def getTimepoint(self, t: int, current: Ice.Current) -> bytes:
        shape = shape_of(self._image())
        return b"".join(self.getStack(c, t, current) for c in range(shape.size_c))

    def getPlaneRegion(self, z: int, c: int, t: int, count: int, offset: int,
                       current: Ice.Current) -> bytes:
        plane = self.getPlane(z, c, t, current)
        width = self.getByteWidth(current)
        return plane[offset * width:(offset + count) * width]

    def getHypercube(self, offset: list[int], size: list[int], step: list[int],
                     current: Ice.Current) -> bytes:
        if any(s != 1 for s in step):
            raise api_usage("getHypercube supports step 1 only in the emulator.")
        x0, y0, z0, c0, t0 = offset
        w, h, zs, cs, ts = size
        return b"".join(self._tile(z, c, t, x0, y0, w, h)
                        for t in range(t0, t0 + ts) for c in range(c0, c0 + cs)
                        for z in range(z0, z0 + zs))

    # -- writing ---------------------------------------------------------------------------

    def _writable(self, current: Ice.Current) -> Obj:
        caller = self.caller(current)
        image = self._image()
        if image.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation(f"Image {image.id} belongs to another user.")
        if self._level0() != 0:
            raise api_usage("Pixels can only be written at full resolution.")
        return image

    def setTile(self, buf: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int,
                current: Ice.Current) -> None:
        image = self._writable(current)
        self._check(z, c, t, x, y, w, h)
        shape = shape_of(image)
        if len(buf) != w * h * shape.dtype.itemsize:
            raise api_usage(f"Expected {w * h * shape.dtype.itemsize} bytes for a {w}×{h} "
                            f"tile, got {len(buf)}.")
        self.ctx.pixels.write(image.id, shape, levels_of(image), buf, z=z, c=c, t=t, x=x,
                              y=y, w=w, h=h)
        self.ctx.mark_dirty(image.id)

    def setPlane(self, buf: bytes, z: int, c: int, t: int, current: Ice.Current) -> None:
        sx, sy = levels_of(self._image())[0]
        self.setTile(buf, z, c, t, 0, 0, sx, sy, current)

    def setRow(self, buf: bytes, y: int, z: int, c: int, t: int, current: Ice.Current) -> None:
        sx, _ = levels_of(self._image())[0]
        self.setTile(buf, z, c, t, 0, y, sx, 1, current)

    def setStack(self, buf: bytes, c: int, t: int, current: Ice.Current) -> None:
        image = self._image()
        shape = shape_of(image)
        plane = shape.plane_bytes
        for z in range(shape.size_z):
            self.setPlane(buf[z * plane:(z + 1) * plane], z, c, t, current)

    def setTimepoint(self, buf: bytes, t: int, current: Ice.Current) -> None:
        shape = shape_of(self._image())
        stack = shape.plane_bytes * shape.size_z
        for c in range(shape.size_c):
            self.setStack(buf[c * stack:(c + 1) * stack], c, t, current)

    def save(self, current: Ice.Current) -> Any:
        caller = self.caller(current)
        image = self._image()
        with self._lock:
            self.ctx.finish_if_dirty(image.id)
        refreshed = self.ctx.store.get(image.id, "Image")
        assert refreshed is not None
        self.image = refreshed
        return modelmap.pixels(self.ctx.store, caller.user, refreshed)

    def calculateMessageDigest(self, current: Ice.Current) -> bytes:
        import hashlib

        image = self._image()
        return hashlib.sha1(self.ctx.pixels.path(image.id).read_bytes()).digest()

    def prepare(self, pixels_ids: list[int], current: Ice.Current) -> None:
        return None

    def release(self) -> None:
        if self.image is not None:
            self.ctx.finish_if_dirty(self.image.id)

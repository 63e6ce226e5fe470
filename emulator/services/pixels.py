"""IPixels (create images, pixel descriptions) and RawPixelsStore (read and write pixels).

Resolution levels follow RawPixelsStore's numbering: ``setResolutionLevel(n - 1)`` is
full resolution and 0 the smallest, while ``getResolutionDescriptions()`` lists
them largest first, as a real server does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
from omero.rtypes import rlong, unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, security_violation, servant
from cellprofiler_omero.emulator.pixels import BIT_SIZES, PYRAMID_TYPES, PixelsShape
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

    # Rendering settings (PixelsImpl): kept by the RenderingEngine, see rendering.py.

    def _readable_image(self, caller: Any, pixels_id: int) -> Obj | None:
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        return image if self.visible(caller, image) else None

    def retrieveAllRndSettings(self, pixels_id: int, user_id: int, current: Ice.Current
                               ) -> list[Any]:
        from cellprofiler_omero.emulator.services import rendering

        caller = self.caller(current)
        image = self._readable_image(caller, pixels_id)
        if image is None:
            return []
        return [rendering.rdef_model(self.ctx, caller.user, r)
                for r in rendering.user_rdefs(self.ctx, image, user_id)]

    def retrieveRndSettingsFor(self, pixels_id: int, user_id: int, current: Ice.Current
                               ) -> Any:
        found = self.retrieveAllRndSettings(pixels_id, user_id, current)
        return found[0] if found else None

    def retrieveRndSettings(self, pixels_id: int, current: Ice.Current) -> Any:
        from cellprofiler_omero.emulator.services import rendering

        caller = self.caller(current)
        image = self._readable_image(caller, pixels_id)
        rdef = None if image is None else rendering.settings_for(self.ctx, image,
                                                                 caller.user.id)
        return None if rdef is None else rendering.rdef_model(self.ctx, caller.user, rdef)

    def loadRndSettings(self, rdef_id: int, current: Ice.Current) -> Any:
        from cellprofiler_omero.emulator.services import rendering

        caller = self.caller(current)
        rdef = self.ctx.store.get(rdef_id, rendering.RDEF)
        if rdef is None or not self.visible(caller, rdef):
            return None
        return rendering.rdef_model(self.ctx, caller.user, rdef)


# -- what a real server answers (ome/omero-romio, mapped to Ice by omero-blitz's IceMapper) --

#: ``RomioPixelBuffer.MAXIMUM_BUFFER_SIZE``: a ROMIO buffer's tile is at most 1 MiB of rows.
ROMIO_MAX_BUFFER = 1048576

#: ``LockTimeout`` that ``BfPyramidPixelBuffer.acquireLock`` raises (15 s back-off).
LOCK_BACKOFF_MS = 15 * 1000


def _server_error(cls: type, java_class: str, message: str, **fields: Any) -> Any:
    exc = cls(serverStackTrace="", serverExceptionClass=java_class, message=message)
    for name, value in fields.items():
        setattr(exc, name, value)
    return exc


def write_not_permitted() -> omero.ApiUsageException:
    """``RomioPixelBuffer.throwIfReadOnly``: the store was bound after the file existed."""
    return _server_error(omero.ApiUsageException, "ome.conditions.ApiUsageException",
                         "Write-method not permitted.")


def non_tile_writing() -> omero.InternalException:
    """``BfPyramidPixelBuffer.setPlane/setRow/setStack/…`` (an UnsupportedOperationException)."""
    return _server_error(omero.InternalException, "java.lang.UnsupportedOperationException",
                         "Non-tile based writing unsupported.")


def unsupported(message: str) -> omero.InternalException:
    return _server_error(omero.InternalException, "java.lang.UnsupportedOperationException",
                         message)


def pyramid_mode(message: str) -> omero.ApiUsageException:
    """``BfPyramidPixelBuffer``: "In read-only mode!" / "In write mode!"."""
    return _server_error(omero.ApiUsageException, "ome.conditions.ApiUsageException", message)


@servant(omero.api.RawPixelsStore)
class RawPixelsStoreI(StatefulServant):
    """RawPixelsStore: tiles, planes and stacks of one image, at any resolution level.

    Which buffer a store gets is decided in ``setPixelsId``, as ome/omero-romio's
    ``PixelsService.getPixelBuffer`` decides it (a RawPixelsStore always asks for a
    writable one):

    * an image below the pyramid threshold has a ROMIO pixel file, created by the first
      read or write through a store bound before it existed; such stores may write,
      every store bound later is read-only ("Write-method not permitted.");
    * a pyramid image without a pyramid: the store becomes the pyramid writer and holds
      the image's lock (another store's ``setPixelsId`` then fails with ``LockTimeout``).
      It writes tiles only; its tiles land where the real TIFF writer's sequential
      layout puts them (planes in the order they were started, each plane's first tile
      at 0,0 and the rest on that tile's grid). Closing or saving it, or any call that
      reads through it, finishes the pyramid; with no tile written that is an empty,
      unreadable pyramid, as on a real server;
    * a finished pyramid is read-only ("In read-only mode!"); until the (emulated)
      pixel-data service has built it, ``setPixelsId`` raises ``MissingPyramidException``.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.image: Obj | None = None
        self.level = 0  # RawPixelsStore numbering (n-1 = full)
        # Calls on one store run one at a time, as RawPixelsBean's methods are synchronized.
        self._lock = threading.RLock()
        #: ROMIO buffer: bound before the pixel file existed, so it may write.
        self.writable = False
        #: The file is open through this store (created on the first read or write).
        self._file_open = False
        #: This store is the pyramid writer of its image (holds the lock).
        self.pyramid_writer = False
        self._tiles_written = 0
        #: Written through since the last save (RawPixelsBean.isModified).
        self._modified = False
        # The sequential TIFF writer's state: planes get IFDs in the order they start.
        self._plane: tuple[int, int, int] | None = None
        self._ifd_tile = (0, 0)
        self._ifd_slot = 0
        self._ifd_count = 0
        self._origin_slot: int | None = None
        self._first_tile: tuple[int, int] | None = None

    # -- binding ---------------------------------------------------------------------------

    def setPixelsId(self, pixels_id: int, bypass: bool, current: Ice.Current) -> None:
        caller = self.caller(current)
        image_id = modelmap.image_id_of_pixels(pixels_id)
        if self.image is not None and self.image.id == image_id:
            return  # RawPixelsBean keeps its buffer when the id is unchanged
        self._unbind()
        image = self.ctx.store.get(image_id, "Image")
        if image is None or not self.visible(caller, image):
            # A real server answers with a security violation for others' private images.
            if image is not None:
                raise security_violation(f"Cannot read Pixels:{pixels_id}.")
            raise api_usage(f"Pixels:{pixels_id} does not exist.")
        if image.data.get("requiresPyramid", len(levels_of(image)) > 1):
            self._bind_pyramid(image, pixels_id)
        else:
            self.writable = not image.data.get("pixelFile", True)
        self.image = image
        self.level = len(levels_of(image)) - 1

    def _bind_pyramid(self, image: Obj, pixels_id: int) -> None:
        """``PixelsService.getPixelBuffer`` for a pyramid image (raises like it)."""
        path = self._pyramid_path(pixels_id)
        with self.ctx._lock:  # decide and take the lock as one step
            fresh = self.ctx.store.get(image.id, "Image")
            image = fresh if fresh is not None else image
            state = image.data.get("pyramid", "ready")
            if state == "missing":
                holder = self.ctx.pyramid_writers.get(image.id)
                if holder is not None and holder is not self:
                    parent, name = path.rsplit("/", 1)
                    raise _server_error(omero.LockTimeout, "ome.conditions.LockTimeout",
                                        f"Already locked! {parent}/.{name}.pyr_lock",
                                        backOff=LOCK_BACKOFF_MS, seconds=0)
                self.ctx.pyramid_writers[image.id] = self
                self.pyramid_writer = True
                self._tiles_written, self._plane, self._ifd_count = 0, None, 0
                self._origin_slot = self._first_tile = None
                return
        if state == "empty":
            raise _server_error(omero.ResourceError, "ome.conditions.ResourceError",
                                f"Error instantiating pixel buffer: {path}")
        wait = self.ctx.pyramid_wait_s(image)
        if wait > 0:
            # As PixelsService.handleMissingPyramid while the pixel-data service works;
            # backOff is the server's estimate (ms) of how long that takes.
            raise _server_error(omero.MissingPyramidException,
                                "ome.conditions.MissingPyramidException",
                                f"Missing pyramid:{path}", backOff=max(1, int(wait * 1000)),
                                pixelsID=pixels_id)

    def _pyramid_path(self, pixels_id: int) -> str:
        return f"{self.ctx.pixels.root}/{pixels_id}_pyramid"

    def _unbind(self) -> None:
        """Close the current buffer (RawPixelsBean.closePixelBuffer)."""
        if self.image is not None:
            if self.pyramid_writer:
                self._finish_pyramid()
            else:
                self.ctx.finish_if_dirty(self.image.id)
        self.image = None
        self.writable = False
        self._file_open = False
        self._modified = False

    def _image(self) -> Obj:
        if self.image is None:
            raise api_usage("This RawPixelsStore has not been properly initialized.\n"
                            "Please set the pixels id before executing any other methods.\n")
        return self.image

    def _is_pyramid(self) -> bool:
        return len(levels_of(self._image())) > 1

    def _full(self) -> int:
        return len(levels_of(self._image())) - 1

    def _level0(self) -> int:
        """The storage level (0 = full) of the current RawPixelsStore level."""
        return self._full() - self.level

    def _read_buffer(self) -> Obj:
        """A call that reads through the buffer: a pyramid writer finishes first (as
        ``BfPyramidPixelBuffer.delegate()`` closes its writer); a writable ROMIO buffer
        opens (and so creates) the pixel file."""
        image = self._image()
        if self.pyramid_writer:
            self._finish_pyramid()
        elif self.writable:
            self._open_file()
        return image

    def _open_file(self) -> None:
        with self._lock:
            if not self._file_open:
                self._file_open = True
                self.ctx.mark_pixel_file(self._image().id)

    def _finish_pyramid(self) -> None:
        """``BfPyramidPixelBuffer.closeWriter``: the pyramid file appears, lock released."""
        with self._lock:
            if self.pyramid_writer:
                self._close_writer()

    def _close_writer(self) -> None:
        image = self._image()
        self.pyramid_writer = False
        with self.ctx._lock:
            # The pyramid file appears as the lock goes, so no store sees neither.
            if self.ctx.pyramid_writers.get(image.id) is self:
                del self.ctx.pyramid_writers[image.id]
            if self.ctx.store.get(image.id, "Image") is None:
                return  # deleted while being written: nothing left to finish
            if self._tiles_written == 0:
                # The writer moves its empty temporary file into place: a corrupt pyramid.
                self.ctx.set_pyramid_state(image.id, "empty")
            else:
                tile = self._first_tile or self.ctx.tile_size()
                self.ctx.set_pyramid_state(
                    image.id, "building", tileSize=list(tile),
                    pyramidReadyAt=time.time() + self.ctx.pyramid_delay_s())
        if self._tiles_written:
            self.ctx.finish_image(image.id)
        refreshed = self.ctx.store.get(image.id, "Image")
        if refreshed is not None:
            self.image = refreshed

    def getPixelsId(self, current: Ice.Current) -> int:
        return modelmap.pixels_id(self._image().id)

    def getResolutionLevels(self, current: Ice.Current) -> int:
        self._not_writing()
        return len(levels_of(self._image()))

    def getResolutionLevel(self, current: Ice.Current) -> int:
        self._not_writing()
        return self.level

    def setResolutionLevel(self, level: int, current: Ice.Current) -> None:
        self._not_writing()
        if not self._is_pyramid():
            raise unsupported("Cannot set resolution levels on a ROMIO pixel buffer.")
        if not 0 <= level <= self._full():
            raise api_usage(f"Resolution level {level} does not exist "
                            f"(0..{self._full()}).")
        self.level = level

    def getResolutionDescriptions(self, current: Ice.Current) -> list[Any]:
        self._not_writing()
        return [omero.api.ResolutionDescription(sizeX=x, sizeY=y)
                for x, y in levels_of(self._image())]

    def _not_writing(self) -> None:
        self._image()
        if self.pyramid_writer:
            raise pyramid_mode("In write mode!")

    def requiresPixelsPyramid(self, current: Ice.Current) -> bool:
        image = self._image()
        return bool(image.data.get("requiresPyramid", len(levels_of(image)) > 1))

    def getTileSize(self, current: Ice.Current) -> list[int]:
        image = self._image()
        if self.pyramid_writer:
            # BfPyramidPixelBuffer in write mode: the configured pyramid tile size.
            return list(self.ctx.tile_size())
        if self._is_pyramid():
            # Reading: the tile size the pyramid was written with.
            return [int(v) for v in image.data.get("tileSize") or self.ctx.tile_size()]
        # RomioPixelBuffer: whole rows, at most ROMIO_MAX_BUFFER bytes.
        shape = shape_of(image)
        rows = min(shape.size_y, (ROMIO_MAX_BUFFER // shape.dtype.itemsize) // shape.size_x)
        return [shape.size_x, rows]

    # -- sizes -------------------------------------------------------------------------------

    def _size(self) -> tuple[int, int]:
        return levels_of(self._image())[self._level0()]

    def getByteWidth(self, current: Ice.Current) -> int:
        return shape_of(self._read_buffer()).dtype.itemsize

    def isSigned(self, current: Ice.Current) -> bool:
        return shape_of(self._read_buffer()).pixel_type in ("int8", "int16", "int32", "float",
                                                            "double")

    def isFloat(self, current: Ice.Current) -> bool:
        return shape_of(self._read_buffer()).pixel_type in ("float", "double")

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
        image = self._read_buffer()
        self._check(z, c, t, x, y, w, h)
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
        image = self._read_buffer()
        if self._is_pyramid():
            raise unsupported("Not supported.")
        shape = shape_of(image)
        sx, sy = self._size()
        if sx * sy * shape.size_z * shape.dtype.itemsize > MESSAGE_LIMIT_BYTES:
            raise api_usage("The stack is over the message limit; read planes instead.")
        return b"".join(self._tile(z, c, t, 0, 0, sx, sy) for z in range(shape.size_z))

    def getTimepoint(self, t: int, current: Ice.Current) -> bytes:
        image = self._read_buffer()
        if self._is_pyramid():
            raise unsupported("Not supported.")
        shape = shape_of(image)
        return b"".join(self.getStack(c, t, current) for c in range(shape.size_c))

    def getPlaneRegion(self, z: int, c: int, t: int, count: int, offset: int,
                       current: Ice.Current) -> bytes:
        plane = self.getPlane(z, c, t, current)
        width = self.getByteWidth(current)
        return plane[offset * width:(offset + count) * width]

    def getHypercube(self, offset: list[int], size: list[int], step: list[int],
                     current: Ice.Current) -> bytes:
        self._read_buffer()
        if self._is_pyramid():
            raise unsupported("Not yet implemented.")
        if any(s != 1 for s in step):
            raise api_usage("getHypercube supports step 1 only in the emulator.")
        x0, y0, z0, c0, t0 = offset
        w, h, zs, cs, ts = size
        return b"".join(self._tile(z, c, t, x0, y0, w, h)
                        for t in range(t0, t0 + ts) for c in range(c0, c0 + cs)
                        for z in range(z0, z0 + zs))

    # -- writing ---------------------------------------------------------------------------

    def _owned(self, current: Ice.Current) -> Obj:
        caller = self.caller(current)
        image = self._image()
        if image.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation(f"Image {image.id} belongs to another user.")
        return image

    def _romio_writable(self, current: Ice.Current) -> Obj:
        """The checks of a ROMIO write, in the real order; opens (creates) the file."""
        image = self._owned(current)
        if not self.writable:
            raise write_not_permitted()
        if self._level0() != 0:
            raise api_usage("Pixels can only be written at full resolution.")
        self._open_file()
        return image

    def _non_tile_write(self, current: Ice.Current) -> Obj:
        """setPlane/setRow/setStack/setTimepoint/setRegion: never on a pyramid."""
        if self._is_pyramid():
            self._owned(current)
            raise non_tile_writing()
        return self._romio_writable(current)

    def setTile(self, buf: bytes, z: int, c: int, t: int, x: int, y: int, w: int, h: int,
                current: Ice.Current) -> None:
        if self._is_pyramid():
            self._owned(current)
            self._pyramid_tile(buf, z, c, t, x, y, w, h)
            return
        image = self._romio_writable(current)
        self._write_tile(image, buf, z, c, t, x, y, w, h)

    def _write_tile(self, image: Obj, buf: bytes, z: int, c: int, t: int, x: int, y: int,
                    w: int, h: int) -> None:
        self._check(z, c, t, x, y, w, h)
        shape = shape_of(image)
        if len(buf) != w * h * shape.dtype.itemsize:
            raise api_usage(f"Expected {w * h * shape.dtype.itemsize} bytes for a {w}×{h} "
                            f"tile, got {len(buf)}.")
        self.ctx.pixels.write(image.id, shape, levels_of(image), buf, z=z, c=c, t=t, x=x,
                              y=y, w=w, h=h)
        self._modified = True
        self.ctx.mark_dirty(image.id)

    def _pyramid_tile(self, buf: bytes, z: int, c: int, t: int, x: int, y: int, w: int,
                      h: int) -> None:
        """``BfPyramidPixelBuffer.setTile`` and the sequential TIFF writer under it."""
        with self._lock:
            self._pyramid_tile_locked(buf, z, c, t, x, y, w, h)

    def _pyramid_tile_locked(self, buf: bytes, z: int, c: int, t: int, x: int, y: int,
                             w: int, h: int) -> None:
        image = self._image()
        if not self.pyramid_writer:
            raise pyramid_mode("In read-only mode!")
        shape = shape_of(image)
        if shape.pixel_type not in PYRAMID_TYPES:
            # The JPEG-2000 codec compresses each tile as it is written, so the first
            # tile of a type it cannot hold fails (OMERO pyramids hold uint8/uint16).
            raise _server_error(omero.InternalException, "java.lang.RuntimeException",
                                "loci.formats.FormatException: Could not compress "
                                "JPEG-2000 data.")
        self._check(z, c, t, x, y, w, h)
        if len(buf) != w * h * shape.dtype.itemsize:
            raise api_usage(f"Expected {w * h * shape.dtype.itemsize} bytes for a {w}×{h} "
                            f"tile, got {len(buf)}.")
        plane = (z, c, t)
        if plane != self._plane:
            # A new plane gets a new TIFF IFD, tiled like its first tile.
            self._plane, self._ifd_tile = plane, (w, h)
            if (x, y) == (0, 0):
                self._ifd_slot, self._origin_slot = self._ifd_count, self._ifd_count
                self._ifd_count += 1
            elif self._origin_slot is None:
                # TiffSaver keeps tile offsets from the last plane that began at 0,0;
                # before any there are none.
                raise _server_error(omero.InternalException, "java.lang.NullPointerException",
                                    "")
            else:
                # ... and rewrites that plane's IFD with this tile: it lands there.
                self._ifd_slot = self._origin_slot
        if self._first_tile is None:
            self._first_tile = (w, h)
        self._tiles_written += 1
        self._modified = True
        planes = shape.size_z * shape.size_c * shape.size_t
        if self._ifd_slot >= planes:
            return  # an IFD past the planes a reader sees
        # The reader maps IFD k to plane k (z fastest, then c, then t).
        slot = self._ifd_slot
        tz, tc, tt = (slot % shape.size_z, (slot // shape.size_z) % shape.size_c,
                      slot // (shape.size_z * shape.size_c))
        tile_w, tile_h = self._ifd_tile
        dest_x, dest_y = (x // tile_w) * tile_w, (y // tile_h) * tile_h
        sx, sy = levels_of(image)[0]
        cw, ch = min(w, sx - dest_x), min(h, sy - dest_y)
        data = np.frombuffer(buf, dtype=shape.dtype).reshape(h, w)[:ch, :cw]
        self.ctx.pixels.write(image.id, shape, levels_of(image), data.tobytes(), z=tz, c=tc,
                              t=tt, x=dest_x, y=dest_y, w=cw, h=ch)

    def setPlane(self, buf: bytes, z: int, c: int, t: int, current: Ice.Current) -> None:
        image = self._non_tile_write(current)
        sx, sy = levels_of(image)[0]
        self._write_tile(image, buf, z, c, t, 0, 0, sx, sy)

    def setRow(self, buf: bytes, y: int, z: int, c: int, t: int, current: Ice.Current) -> None:
        image = self._non_tile_write(current)
        sx, _ = levels_of(image)[0]
        self._write_tile(image, buf, z, c, t, 0, y, sx, 1)

    def setStack(self, buf: bytes, z: int, c: int, t: int, current: Ice.Current) -> None:
        # The slice signature names a z it ignores: a stack is every z of (c, t).
        image = self._non_tile_write(current)
        shape = shape_of(image)
        plane = shape.plane_bytes
        if len(buf) != plane * shape.size_z:
            raise api_usage(f"Expected {plane * shape.size_z} bytes for a stack, "
                            f"got {len(buf)}.")
        for zz in range(shape.size_z):
            self._write_tile(image, buf[zz * plane:(zz + 1) * plane], zz, c, t, 0, 0,
                             shape.size_x, shape.size_y)

    def setTimepoint(self, buf: bytes, t: int, current: Ice.Current) -> None:
        image = self._non_tile_write(current)
        shape = shape_of(image)
        plane = shape.plane_bytes
        if len(buf) != plane * shape.size_z * shape.size_c:
            raise api_usage(f"Expected {plane * shape.size_z * shape.size_c} bytes for a "
                            f"timepoint, got {len(buf)}.")
        for index in range(shape.size_c * shape.size_z):
            cc, zz = divmod(index, shape.size_z)
            self._write_tile(image, buf[index * plane:(index + 1) * plane], zz, cc, t, 0, 0,
                             shape.size_x, shape.size_y)

    def setRegion(self, size: int, offset: int, buf: bytes, current: Ice.Current) -> None:
        image = self._non_tile_write(current)
        try:
            self.ctx.pixels.write_region(image.id, shape_of(image), levels_of(image),
                                         buf[:size], offset)
        except ValueError as exc:
            raise api_usage(str(exc)) from None
        self._modified = True
        self.ctx.mark_dirty(image.id)

    def save(self, current: Ice.Current) -> Any:
        caller = self.caller(current)
        image = self._image()
        if not self._modified:
            return None  # RawPixelsBean.save answers null when nothing was written
        self._modified = False
        # It computes the digest, which reads through the buffer (and so finishes a
        # pyramid writer).
        self._read_buffer()
        with self._lock:
            self.ctx.finish_if_dirty(image.id)
        refreshed = self.ctx.store.get(image.id, "Image")
        assert refreshed is not None
        self.image = refreshed
        return modelmap.pixels(self.ctx.store, caller.user, refreshed)

    def calculateMessageDigest(self, current: Ice.Current) -> bytes:
        import hashlib

        image = self._read_buffer()
        return hashlib.sha1(self.ctx.pixels.path(image.id).read_bytes()).digest()

    def getHistogram(self, channels: list[int], bin_count: int, global_range: bool,
                     plane: Any, current: Ice.Current) -> dict[int, list[int]]:
        """``RawPixelsBean.getHistogram``: counts of one plane (or a region of it) in
        ``bin_count`` equal bins over the channel's global min..max (when known and the
        max is not 1.0) or else the plane's own min..max, at the largest resolution
        level within ``max_plane_width × max_plane_height`` — where it leaves the store."""
        image = self._read_buffer()
        shape = shape_of(image)
        levels = levels_of(image)
        max_w, max_h, _ = self.ctx.pixel_limits()
        chosen = -1  # RawPixelsStore numbering: 0 is the smallest level
        for index in range(len(levels)):
            sx, sy = levels[len(levels) - 1 - index]
            if sx > max_w or sy > max_h:
                break
            chosen = index
        if chosen < 0:
            raise api_usage("All resolution levels larger than max plane size")
        if len(levels) > 1:
            self.level = chosen
        level0 = len(levels) - 1 - chosen
        sx, sy = levels[level0]
        bins = bin_count if bin_count > 0 else 256
        z = plane.z if plane is not None and plane.z >= 0 else 0
        t = plane.t if plane is not None and plane.t >= 0 else 0
        region = plane.region if plane is not None else None
        x = region.x if region is not None and region.x >= 0 else 0
        y = region.y if region is not None and region.y >= 0 else 0
        w = region.width if region is not None and region.width > 0 else sx
        h = region.height if region is not None and region.height > 0 else sy
        arr = self.ctx.pixels.array(image.id, shape, level0, levels)
        result: dict[int, list[int]] = {}
        for ch in channels:
            if not 0 <= ch < shape.size_c:
                raise _server_error(omero.ResourceError, "ome.conditions.ResourceError",
                                    f"Index {ch} out of bounds for length {shape.size_c}")
            if not (0 <= z < shape.size_z and 0 <= t < shape.size_t):
                raise _server_error(omero.ResourceError, "ome.conditions.ResourceError",
                                    f"Plane z={z} t={t} is outside the image.")
            full = np.asarray(arr[t, ch, z], dtype=np.float64)
            stats = image.data["channels"][ch]
            if global_range and stats.get("max") is not None and float(stats["max"]) != 1.0:
                lo, hi = float(stats["min"]), float(stats["max"])
            else:
                lo, hi = float(full.min()), float(full.max())
            values = full[y:y + h, x:x + w].ravel()
            values = values[(values >= lo) & (values <= hi)]
            width = (hi - lo) / bins
            if width > 0:
                index_of = ((values - lo) / width).astype(np.int64)
                index_of[index_of == bins] = bins - 1
            else:
                # Java: (v - min) / 0.0 is NaN for v == min, and (int) NaN is 0.
                index_of = np.zeros(values.shape, dtype=np.int64)
            result[ch] = [int(n) for n in np.bincount(index_of, minlength=bins)[:bins]]
        return result

    def prepare(self, pixels_ids: list[int], current: Ice.Current) -> None:
        return None

    def release(self) -> None:
        self._unbind()

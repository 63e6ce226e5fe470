"""Creating images over Ice, exactly once per client key, within a real server's rules.

The new image's description carries a marker with the key from the moment it is
created, and a provenance map annotation carries it once the upload is complete,
so a retry after a dropped connection finds the earlier attempt instead of making
another: complete → reused as it is; incomplete → set aside (renamed, its marker
replaced, then deleted if the server allows) and a new image is made. An image that
already has pixel data is never written again, because a real server binds every
RawPixelsStore opened after the first write read-only ("Write-method not permitted.").

Writing follows the server (ome/omero-romio ``PixelsService``, ``BfPyramidPixelBuffer``):

* planes within the server's maximum plane size (and float/double planes, which are
  exempt) go up concurrently through a fixed set of stores that were all bound with
  ``setPixelsId`` before the first write, each plane in strips under the message
  limit; a store that fails ends the attempt (it is never replaced mid-upload);
* bigger uint8/uint16 planes go into a pyramid: tiles of the server's ``getTileSize()``
  in omero-py's ``RPSTileLoop`` order (t, c, z, rows, columns) through one store,
  which holds the pyramid's lock; then ``save`` and ``close``;
* other pixel types above the limit are refused before anything is created.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import anyio
import numpy as np
import omero
import omero.model
import omero.sys
from omero.model.enums import UnitsLength
from omero.rtypes import rlong, rstring, unwrap

from cellprofiler_omero import __version__
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import (
    NotFound,
    PermissionDenied,
    PlaneTooLarge,
    ServerError,
)
from cellprofiler_omero.core.model import NewImage, PixelType, UploadedImage
from cellprofiler_omero.core.pixels import encode, iter_strips, rps_tile_loop
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.core.tasks import task_group
from cellprofiler_omero.core.uploading import PROVENANCE_NS
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params
from cellprofiler_omero.transports.ice.reader import close_quietly

log = logging.getLogger(__name__)

#: Pixel types a real server can keep as a pyramid (its pyramid writer's codec).
PYRAMID_TYPES = (PixelType.UINT8, PixelType.UINT16)
#: Types exempt from the maximum plane size while ``max_plane_float_override`` is on.
FLOAT_TYPES = (PixelType.FLOAT, PixelType.DOUBLE)
#: How long to wait for the server to delete an abandoned partial image.
DELETE_WAIT_SECONDS = 60.0
#: The server's plane limits per connection (read once).
_LIMITS: weakref.WeakKeyDictionary[IceConnection, tuple[tuple[int, int] | None, bool]] = \
    weakref.WeakKeyDictionary()


def marker(key: str) -> str:
    """The description marker of an upload in progress."""
    return f"[cellprofiler-omero upload {key}]"


def abandoned_marker(key: str) -> str:
    """The description marker of a partial image set aside by a retry (never a candidate)."""
    return f"[cellprofiler-omero abandoned upload {key}]"


class IceImageSink(AsyncClosing):
    """The Ice transport's ``ImageSink``."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings
        self._limits: tuple[tuple[int, int] | None, bool] | None = None

    async def aclose(self) -> None:
        return None

    # -- finding earlier attempts -----------------------------------------------------------

    def _find(self, key: str, name: str) -> tuple[int | None, list[int]]:
        """``(complete image, partial images)`` of earlier uploads with this key."""
        query = self.conn.sf.getQueryService()
        p = omero.sys.ParametersI()
        p.add("ns", rstring(PROVENANCE_NS))
        p.add("key", rstring(key))
        rows = query.projection(
            "select l.parent.id from ImageAnnotationLink l join l.child a join a.mapValue mv "
            "where a.ns = :ns and mv.name = 'upload_key' and mv.value = :key "
            "order by l.parent.id", p, ALL_GROUPS)
        if rows:
            return int(unwrap(rows[0][0])), []
        p = omero.sys.ParametersI()
        p.add("marker", rstring(f"%{marker(key)}%"))
        p.add("name", rstring(name))
        p.addLong("uid", self.conn.info.user_id)
        # Narrowed by owner and name first: a description LIKE alone scans every image.
        rows = query.projection(
            "select i.id from Image i where i.details.owner.id = :uid and i.name = :name "
            "and i.description like :marker order by i.id", p, ALL_GROUPS)
        return None, [int(unwrap(row[0])) for row in rows]

    def _has_provenance(self, image_id: int, key: str) -> bool:
        p = params(id=image_id)
        p.add("ns", rstring(PROVENANCE_NS))
        p.add("key", rstring(key))
        rows = self.conn.sf.getQueryService().projection(
            "select l.id from ImageAnnotationLink l join l.child a join a.mapValue mv "
            "where l.parent.id = :id and a.ns = :ns and mv.name = 'upload_key' "
            "and mv.value = :key", p, ALL_GROUPS)
        return bool(rows)

    # -- setting a partial image aside --------------------------------------------------------

    def _abandon(self, image_id: int, key: str) -> None:
        """Set a partial image aside so no retry finds it again, then try to delete it.

        It is marked first (always possible for its owner) so that exactly-once holds
        even where deleting is not allowed or fails half-way.
        """
        sf = self.conn.sf
        image = sf.getQueryService().get("Image", image_id, ALL_GROUPS)
        group_id = unwrap(image.getDetails().getGroup().getId())
        ctx = {"omero.group": str(group_id)}
        name = unwrap(image.getName()) or ""
        description = (unwrap(image.getDescription()) or "").replace(
            marker(key), abandoned_marker(key))
        image.setName(rstring(f"{name} (incomplete upload, safe to delete)"))
        image.setDescription(rstring(description))
        sf.getUpdateService().saveObject(image, ctx)
        if self.conn.delete({"Image": [image_id]}, ctx, wait_seconds=DELETE_WAIT_SECONDS):
            log.info("deleted image %s, left incomplete by an earlier attempt", image_id)
        else:
            log.warning("image %s, left incomplete by an earlier upload attempt, could not "
                        "be deleted; it is renamed '... (incomplete upload, safe to delete)'",
                        image_id)

    # -- the server's plane limits ----------------------------------------------------------

    def _plane_limits(self) -> tuple[tuple[int, int] | None, bool]:
        """``(max plane (w, h) or None, whether float/double are exempt)``, read once
        per connection (a sink lives for one upload; a connection for many)."""
        if self._limits is None:
            self._limits = _LIMITS.get(self.conn)
        if self._limits is None:
            config = self.conn.sf.getConfigService()

            def value(key: str) -> str:
                try:
                    return str(config.getConfigValue(key) or "")
                except omero.ServerError:  # hidden from this user: treat as unknown
                    return ""

            width, height = (value(f"omero.pixeldata.max_plane_{axis}")
                             for axis in ("width", "height"))
            override = value("omero.pixeldata.max_plane_float_override").strip().lower()
            limit = (int(width), int(height)) if width.isdigit() and height.isdigit() \
                else None
            # The server's default (ome/omero-common config.xml) exempts float and double.
            self._limits = _LIMITS[self.conn] = (limit, override != "false")
        return self._limits

    def _check_plane_size(self, ptype: PixelType, size_x: int, size_y: int) -> None:
        """Refuse, before anything is created, a plane the server cannot store."""
        limit, float_exempt = self._plane_limits()
        if limit is None or size_x * size_y <= limit[0] * limit[1]:
            return
        if ptype in PYRAMID_TYPES or (float_exempt and ptype in FLOAT_TYPES):
            return
        raise _too_large(ptype, size_x, size_y, limit, float_exempt)

    # -- creating --------------------------------------------------------------------------

    def _create(self, pixels: np.ndarray, ptype: PixelType, spec: NewImage, group_id: int
                ) -> int:
        """A new image in ``group_id`` (new objects go to the call context's group)."""
        sf = self.conn.sf
        t, z, c, y, x = pixels.shape
        p = omero.sys.ParametersI()
        p.add("value", rstring(ptype.value))
        ome_type = sf.getQueryService().findByQuery(
            "from PixelsType as p where p.value = :value", p)
        if ome_type is None:
            raise ServerError(f"The server has no pixel type {ptype.value!r}.")
        description = f"{spec.description}\n{marker(spec.client_key)}".strip()
        image_id = sf.getPixelsService().createImage(
            x, y, z, t, list(range(c)), ome_type, spec.name, description,
            {"omero.group": str(group_id)})
        return int(unwrap(image_id))

    def _pixels_id(self, image_id: int) -> int:
        rows = self.conn.sf.getQueryService().projection(
            "select p.id from Pixels p where p.image.id = :id", params(id=image_id),
            ALL_GROUPS)
        if not rows:
            raise ServerError(f"Image {image_id} has no pixels on the server.")
        return int(unwrap(rows[0][0]))

    # -- writing ---------------------------------------------------------------------------

    def _open_store(self, pixels_id: int, ctx: dict[str, str]) -> Any:
        store = self.conn.sf.createRawPixelsStore(ctx)
        try:
            store.setPixelsId(pixels_id, True, ctx)
        except BaseException:
            close_quietly(store, ctx)
            raise
        return store

    async def _write(self, image_id: int, pixels_id: int, pixels: np.ndarray,
                     ptype: PixelType, group_id: int) -> None:
        """Write every plane, then save and close every store (which ends the writing)."""
        ctx = {"omero.group": str(group_id)}
        what = f"uploading image {image_id}"
        t, z, c, y, x = pixels.shape
        first = await self.conn.call(self._open_store, pixels_id, ctx, what=what)
        stores = [first]
        try:
            # Asked before anything else: on a pyramid writer most other calls (byte
            # width, resolution levels…) would end its writing mode.
            pyramid = await self.conn.call(lambda: bool(first.requiresPixelsPyramid(ctx)),
                                           what=what)
            if pyramid and ptype not in PYRAMID_TYPES:
                # Reached only when the server hid its plane limits from this user.
                await self.conn.call(close_quietly, first, ctx, what=what)
                stores = []
                raise _too_large(ptype, x, y, None, True)
            if pyramid:
                await self._write_pyramid(first, pixels, ptype, ctx, what)
            else:
                # Every store is bound before the first write: a store bound after the
                # pixel file exists is read-only on a real server.
                wanted = max(1, min(self.settings.ice.stores_per_image, t * z * c *
                                    _strips_per_plane(y, x, ptype, self._max_bytes())))
                for _ in range(wanted - 1):
                    stores.append(await self.conn.call(self._open_store, pixels_id, ctx,
                                                       what=what))
                await self._write_planes(stores, pixels, ptype, ctx, what)
            await self.conn.call(lambda: first.save(ctx), what=what)
            await self.conn.call(self._close_all, stores, ctx, what=what)
        except BaseException:
            # This attempt is over; a retry makes a new image (never reopens this one).
            threading.Thread(target=self._close_quietly_all, args=(stores, ctx), daemon=True,
                             name="close-stores").start()
            raise

    @staticmethod
    def _close_all(stores: list[Any], ctx: dict[str, str]) -> None:
        for store in stores:
            store.close(ctx)

    @staticmethod
    def _close_quietly_all(stores: list[Any], ctx: dict[str, str]) -> None:
        for store in stores:
            close_quietly(store, ctx)

    def _max_bytes(self) -> int:
        return self.settings.transfer.max_chunk_bytes

    async def _write_pyramid(self, store: Any, pixels: np.ndarray, ptype: PixelType,
                             ctx: dict[str, str], what: str) -> None:
        """Tiles of the server's tile size, in ``RPSTileLoop`` order, through one store."""
        t, z, c, y, x = pixels.shape
        tile_w, tile_h = await self.conn.call(lambda: tuple(store.getTileSize(ctx)),
                                              what=what)
        tile_w, tile_h = max(1, min(int(tile_w), x)), max(1, min(int(tile_h), y))
        # Tiles are sent in batches (one worker-thread hop each) but strictly in order.
        batch = max(1, self._max_bytes() // max(1, tile_w * tile_h * ptype.bytes_per_pixel))
        tiles = list(rps_tile_loop(x, y, z, c, t, tile_w, tile_h))

        def put(chunk: list[tuple[int, int, int, int, int, int, int]]) -> None:
            for zz, cc, tt, xx, yy, w, h in chunk:
                data = encode(pixels[tt, zz, cc, yy:yy + h, xx:xx + w], ptype)
                store.setTile(data, zz, cc, tt, xx, yy, w, h, ctx)

        for start in range(0, len(tiles), batch):
            await self.conn.call(put, tiles[start:start + batch], what=what)

    async def _write_planes(self, stores: list[Any], pixels: np.ndarray, ptype: PixelType,
                            ctx: dict[str, str], what: str) -> None:
        """Planes (in strips when over the tile limit) concurrently, one call per store."""
        t, z, c, y, x = pixels.shape
        limit = self._max_bytes()
        send, receive = anyio.create_memory_object_stream[Any](len(stores))
        for store in stores:
            send.send_nowait(store)

        async def piece(tt: int, zz: int, cc: int, row: int, rows: int) -> None:
            store = await receive.receive()
            try:
                data = pixels[tt, zz, cc]

                def put() -> None:
                    if rows == y:
                        store.setPlane(encode(data, ptype), zz, cc, tt, ctx)
                    else:
                        store.setTile(encode(data[row:row + rows], ptype), zz, cc, tt, 0,
                                      row, x, rows, ctx)

                await self.conn.call(put, what=what)
            finally:
                # A failed store is still given back: the failure ends the whole attempt.
                send.send_nowait(store)

        try:
            async with task_group() as tg:
                for tt in range(t):
                    for cc in range(c):
                        for zz in range(z):
                            whole = pixels[tt, zz, cc].nbytes <= limit
                            strips = [(0, y)] if whole else list(
                                iter_strips(y, x, ptype.bytes_per_pixel, limit))
                            for row, rows in strips:
                                tg.start_soon(piece, tt, zz, cc, row, rows)
        finally:
            send.close()
            receive.close()

    # -- finishing -------------------------------------------------------------------------

    def _finish(self, image_id: int, pixels_id: int, pixels: np.ndarray, spec: NewImage,
                group_id: int) -> None:
        sf = self.conn.sf
        ctx = {"omero.group": str(group_id)}
        update = sf.getUpdateService()
        pix = sf.getPixelsService().retrievePixDescription(pixels_id, ctx)
        changed = []
        for index, channel in enumerate(pix.copyChannels()):
            lc = channel.getLogicalChannel()
            lc.setName(rstring(spec.channel_names[index]))
            changed.append(lc)
        if changed:
            update.saveArray(changed, ctx)
        for index in range(pixels.shape[2]):
            values = pixels[:, :, index]
            sf.getPixelsService().setChannelGlobalMinMax(
                unwrap(pix.getId()), index, float(values.min()), float(values.max()), ctx)
        size = spec.physical_size
        if size.x is not None or size.y is not None or size.z is not None:
            pix = sf.getPixelsService().retrievePixDescription(unwrap(pix.getId()), ctx)
            for axis, value in (("X", size.x), ("Y", size.y), ("Z", size.z)):
                if value is not None:
                    getattr(pix, f"setPhysicalSize{axis}")(
                        omero.model.LengthI(value, UnitsLength.MICROMETER))
            update.saveObject(pix, ctx)
        self._link_and_record(image_id, spec, group_id, recorded=False)

    def _link_and_record(self, image_id: int, spec: NewImage, group_id: int, *,
                         recorded: bool) -> None:
        """Dataset link, provenance annotation (unless ``recorded``), then the clean
        description, in that order: the annotation is what marks the upload complete."""
        sf = self.conn.sf
        ctx = {"omero.group": str(group_id)}
        update = sf.getUpdateService()
        query = sf.getQueryService()
        if spec.dataset_id is not None:
            linked = query.projection(
                "select l.id from DatasetImageLink l where l.parent.id = :d and "
                "l.child.id = :i", params(d=spec.dataset_id, i=image_id), ALL_GROUPS)
            if not linked:
                link = omero.model.DatasetImageLinkI()
                link.setParent(omero.model.DatasetI(rlong(spec.dataset_id), False))
                link.setChild(omero.model.ImageI(rlong(image_id), False))
                update.saveObject(link, ctx)
        if not recorded and not self._has_provenance(image_id, spec.client_key):
            ann = omero.model.MapAnnotationI()
            ann.setNs(rstring(PROVENANCE_NS))
            values = [omero.model.NamedValue("upload_key", spec.client_key),
                      omero.model.NamedValue("software", f"cellprofiler-omero {__version__}")]
            values += [omero.model.NamedValue("source_image_id", str(i))
                       for i in spec.source_image_ids]
            values += [omero.model.NamedValue("source_url", u) for u in spec.source_urls]
            ann.setMapValue(values)
            link = omero.model.ImageAnnotationLinkI()
            link.setParent(omero.model.ImageI(rlong(image_id), False))
            link.setChild(ann)
            update.saveObject(link, ctx)
        image = query.get("Image", image_id, ctx)
        if (unwrap(image.getDescription()) or "") != spec.description:
            image.setDescription(rstring(spec.description))
            update.saveObject(image, ctx)

    # -- the upload ------------------------------------------------------------------------

    async def upload(self, pixels: np.ndarray, spec: NewImage) -> UploadedImage:
        ptype = PixelType.from_dtype(pixels.dtype)
        size_y, size_x = pixels.shape[3], pixels.shape[4]
        await self.conn.call(self._check_plane_size, ptype, size_x, size_y,
                             what="reading the server's maximum plane size")
        complete, partial = await self.conn.call(
            self._find, spec.client_key, spec.name, what="looking for an earlier upload")
        if spec.dataset_id is not None and complete is None and not await self.conn.can_write(
                "Dataset", spec.dataset_id):
            raise PermissionDenied(
                f"{self.conn.info.user} may not add images to Dataset {spec.dataset_id}.",
                hint="Choose a dataset you own, or one in a read-write group.")
        group_id = self.conn.info.group_id
        if spec.dataset_id is not None:
            group_id = await self.conn.call(self._group_of_dataset, spec.dataset_id,
                                            what=f"reading Dataset {spec.dataset_id}")
        if complete is not None:
            # Found again (a retry after a lost reply, or a rerun): finish what may be
            # missing, but record its provenance only once.
            found: int = complete
            await self.conn.call(lambda: self._link_and_record(found, spec, group_id,
                                                               recorded=True),
                                 what=f"completing image {found}")
            return UploadedImage(found, spec.name, spec.dataset_id, reused=True)
        for image_id in partial:
            log.info("upload %s: setting aside image %s left incomplete by an earlier "
                     "attempt", spec.client_key[:8], image_id)
            await self.conn.call(self._abandon, image_id, spec.client_key,
                                 what=f"setting aside incomplete image {image_id}")
        image_id = await self.conn.call(self._create, pixels, ptype, spec, group_id,
                                        what=f"creating image {spec.name!r}")
        pixels_id = await self.conn.call(self._pixels_id, image_id,
                                         what=f"finding the pixels of image {image_id}")
        try:
            await self._write(image_id, pixels_id, pixels, ptype, group_id)
        except PlaneTooLarge:
            # The server wants a pyramid its writer cannot hold: nothing usable was
            # written, so the new image goes again at once.
            await self.conn.call(self._abandon, image_id, spec.client_key,
                                 what=f"removing image {image_id}")
            raise
        await self.conn.call(self._finish, image_id, pixels_id, pixels, spec, group_id,
                             what=f"finishing image {image_id}")
        return UploadedImage(image_id, spec.name, spec.dataset_id, reused=False)

    def _group_of_dataset(self, dataset_id: int) -> int:
        rows = self.conn.sf.getQueryService().projection(
            "select d.details.group.id from Dataset d where d.id = :id",
            params(id=dataset_id), ALL_GROUPS)
        if not rows:
            raise NotFound(f"Dataset {dataset_id} does not exist, or "
                           f"{self.conn.info.user} may not read it.")
        return int(unwrap(rows[0][0]))


def _strips_per_plane(size_y: int, size_x: int, ptype: PixelType, max_bytes: int) -> int:
    if size_x * size_y * ptype.bytes_per_pixel <= max_bytes:
        return 1
    return sum(1 for _ in iter_strips(size_y, size_x, ptype.bytes_per_pixel, max_bytes))


def _too_large(ptype: PixelType, size_x: int, size_y: int, limit: tuple[int, int] | None,
               float_exempt: bool) -> PlaneTooLarge:
    where = (f"{limit[0]}×{limit[1]} pixels (omero.pixeldata.max_plane_width × "
             "max_plane_height)" if limit is not None else "its maximum plane size")
    instead = "float32 (exempt from the limit) or " if float_exempt else ""
    return PlaneTooLarge(
        f"A {size_x}×{size_y} {ptype.value} plane is larger than this OMERO server takes "
        f"for {ptype.value} images: {where}. Above it the server keeps planes only as "
        "uint8 or uint16 pyramids.",
        size=(size_x, size_y), max_plane=limit, pixel_type=ptype.value,
        hint=f"Convert the image to {instead}uint16 / uint8 before saving, or save a "
             "smaller region.")

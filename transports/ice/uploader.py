"""Creating images over Ice, exactly once per client key.

The new image's description carries a marker with the key from the moment it is
created, and a provenance map annotation carries it once the upload is complete,
so a retry after a dropped connection finds the image instead of making another:
complete → reused; incomplete → its planes are written again and it is finished.
Planes go up concurrently through a pool of RawPixelsStore handles, each in tiles
under the message limit.
"""

from __future__ import annotations

import logging

import numpy as np
import omero
import omero.model
import omero.sys
from omero.model.enums import UnitsLength
from omero.rtypes import rlong, rstring, unwrap

from cellprofiler_omero import __version__
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import PermissionDenied, ServerError
from cellprofiler_omero.core.model import (
    Channel,
    ImageMeta,
    NewImage,
    PixelType,
    UploadedImage,
)
from cellprofiler_omero.core.pixels import encode, iter_strips
from cellprofiler_omero.core.tasks import task_group
from cellprofiler_omero.core.uploading import PROVENANCE_NS
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params
from cellprofiler_omero.transports.ice.reader import StorePool

log = logging.getLogger(__name__)


def marker(key: str) -> str:
    return f"[cellprofiler-omero upload {key}]"


class IceImageSink:
    """The Ice transport's ``ImageSink``."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    async def aclose(self) -> None:
        return None

    # -- finding earlier attempts -----------------------------------------------------------

    def _find(self, key: str, name: str) -> tuple[int | None, bool]:
        """``(image id, complete)`` of an earlier upload with this key, if any."""
        query = self.conn.sf.getQueryService()
        p = omero.sys.ParametersI()
        p.add("ns", rstring(PROVENANCE_NS))
        p.add("key", rstring(key))
        rows = query.projection(
            "select l.parent.id from ImageAnnotationLink l join l.child a join a.mapValue mv "
            "where a.ns = :ns and mv.name = 'upload_key' and mv.value = :key", p, ALL_GROUPS)
        if rows:
            return int(unwrap(rows[0][0])), True
        p = omero.sys.ParametersI()
        p.add("marker", rstring(f"%{marker(key)}%"))
        p.add("name", rstring(name))
        p.addLong("uid", self.conn.info.user_id)
        # Narrowed by owner and name first: a description LIKE alone scans every image.
        rows = query.projection(
            "select i.id from Image i where i.details.owner.id = :uid and i.name = :name "
            "and i.description like :marker order by i.id", p, ALL_GROUPS)
        if rows:
            return int(unwrap(rows[0][0])), False
        return None, False

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

    async def _write(self, image_id: int, pixels_id: int, pixels: np.ndarray,
                     ptype: PixelType, group_id: int) -> None:
        t, z, c, y, x = pixels.shape
        meta = ImageMeta(image_id, "", x, y, z, c, t, ptype,
                         tuple(Channel(str(i)) for i in range(c)), levels=((x, y),),
                         group_id=group_id, pixels_id=pixels_id)
        pool = StorePool(self.conn, meta, self.settings.ice.stores_per_image)
        limit = self.settings.ice.max_tile_bytes
        what = f"uploading image {image_id}"

        async def plane(tt: int, zz: int, cc: int) -> None:
            data = pixels[tt, zz, cc]
            store, level = await pool.borrow()
            healthy = False
            try:
                def put() -> None:
                    if data.nbytes <= limit:
                        store.setPlane(encode(data, ptype), zz, cc, tt, pool.ctx)
                        return
                    for row, rows in iter_strips(y, x, ptype.bytes_per_pixel, limit):
                        store.setTile(encode(data[row:row + rows], ptype), zz, cc, tt, 0, row,
                                      x, rows, pool.ctx)

                await self.conn.call(put, what=what)
                healthy = True
            finally:
                await pool.give_back(store, level, healthy=healthy)

        try:
            async with task_group() as tg:
                for tt in range(t):
                    for cc in range(c):
                        for zz in range(z):
                            tg.start_soon(plane, tt, zz, cc)
            store, level = await pool.borrow()
            try:
                await self.conn.call(lambda: store.save(pool.ctx), what=what)
            finally:
                await pool.give_back(store, level)
        finally:
            await pool.close()

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
        self._link_and_record(image_id, spec, group_id)

    def _link_and_record(self, image_id: int, spec: NewImage, group_id: int) -> None:
        """Dataset link, provenance annotation, then the clean description (in that order)."""
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
        image.setDescription(rstring(spec.description))
        update.saveObject(image, ctx)

    # -- the upload ------------------------------------------------------------------------

    async def upload(self, pixels: np.ndarray, spec: NewImage) -> UploadedImage:
        ptype = PixelType.from_dtype(pixels.dtype)
        existing, complete = await self.conn.call(self._find, spec.client_key, spec.name,
                                                  what="looking for an earlier upload")
        if spec.dataset_id is not None and not complete and not await self.conn.can_write(
                "Dataset", spec.dataset_id):
            raise PermissionDenied(
                f"{self.conn.info.user} may not add images to Dataset {spec.dataset_id}.",
                hint="Choose a dataset you own, or one in a read-write group.")
        group_id = self.conn.info.group_id
        if spec.dataset_id is not None:
            group_id = await self.conn.call(self._group_of_dataset, spec.dataset_id,
                                            what=f"reading Dataset {spec.dataset_id}")
        if existing is not None and complete:
            await self.conn.call(self._link_and_record, existing, spec, group_id,
                                 what=f"completing image {existing}")
            return UploadedImage(existing, spec.name, spec.dataset_id, reused=True)
        if existing is None:
            image_id = await self.conn.call(self._create, pixels, ptype, spec, group_id,
                                            what=f"creating image {spec.name!r}")
        else:
            image_id = existing
            log.info("resuming upload %s into image %s", spec.client_key[:8], image_id)
        pixels_id = await self.conn.call(self._pixels_id, image_id,
                                         what=f"finding the pixels of image {image_id}")
        await self._write(image_id, pixels_id, pixels, ptype, group_id)
        await self.conn.call(self._finish, image_id, pixels_id, pixels, spec, group_id,
                             what=f"finishing image {image_id}")
        return UploadedImage(image_id, spec.name, spec.dataset_id, reused=existing is not None)

    def _group_of_dataset(self, dataset_id: int) -> int:
        rows = self.conn.sf.getQueryService().projection(
            "select d.details.group.id from Dataset d where d.id = :id",
            params(id=dataset_id), ALL_GROUPS)
        if not rows:
            from cellprofiler_omero.core.errors import NotFound

            raise NotFound(f"Dataset {dataset_id} does not exist, or "
                           f"{self.conn.info.user} may not read it.")
        return int(unwrap(rows[0][0]))





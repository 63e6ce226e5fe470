"""Creating images over Ice, exactly once per client key, within a real server's rules.

The new image's description carries a marker with the key from the moment it is
created, and a provenance map annotation carries it once the upload is complete,
so a retry after a dropped connection finds the earlier attempt instead of making
another: complete → reused as it is; incomplete → set aside (renamed, its marker
replaced, then deleted if the server allows) and a new image is made. An image that
already has pixel data is never written again, because a real server binds every
RawPixelsStore opened after the first write read-only ("Write-method not permitted.").

An upload is two stages (``begin``: find or create the image; ``finish``: write its
pixels and complete it), so SaveImagesToOMERO can record the new image's id at once and
let the pixels go up behind the pipeline. Round trips are few (ARCHITECTURE.md ▸
"Writes: exactly once" lists them): look-ups that do not depend on each other go
together, the server's plane limits, pixel types and a Dataset's group are asked once
per connection, and names, statistics, provenance and the clean description are one
``saveArray`` (one transaction, so "complete" and its record appear together).

Writing follows the server (ome/omero-romio ``PixelsService``, ``BfPyramidPixelBuffer``;
ome/omero-server ``RawPixelsBean``):

* planes within the server's maximum plane size (and float/double planes, which are
  exempt) go up concurrently through a fixed set of stores that were all bound with
  ``setPixelsId`` before the first write, each plane in full-row strips of at most
  4 MiB (whole planes behind the pipeline; romio's ``setTile`` takes strips at x = 0
  of the full width); a store that fails ends the attempt (it is never replaced mid-upload);
  ``close`` saves (``RawPixelsBean.close`` calls ``save``), so there is no separate save;
* bigger uint8/uint16 planes go into a pyramid: tiles of the server's ``getTileSize()``
  in omero-py's ``RPSTileLoop`` order (t, c, z, rows, columns) through one store,
  which holds the pyramid's lock; then ``close``;
* other pixel types above the limit are refused before anything is created.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import omero
import omero.model
import omero.sys
from omero.model.enums import UnitsLength
from omero.rtypes import rdouble, rlong, rstring, unwrap

from cellprofiler_omero import __version__
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import (
    NotFound,
    PermissionDenied,
    PlaneTooLarge,
    ServerError,
    UploadInterrupted,
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


def marker(key: str) -> str:
    """The description marker of an upload in progress."""
    return f"[cellprofiler-omero upload {key}]"


def abandoned_marker(key: str) -> str:
    """The description marker of a partial image set aside by a retry (never a candidate)."""
    return f"[cellprofiler-omero abandoned upload {key}]"


@dataclass
class _ConnectionFacts:
    """What a connection learns once and keeps: the server's plane limits, its pixel
    types, and the groups of Datasets this user may add images to."""

    limits: tuple[tuple[int, int] | None, bool] | None = None
    pixel_types: dict[str, Any] = field(default_factory=dict)
    dataset_groups: dict[int, int] = field(default_factory=dict)


#: Facts per connection (a sink lives for one upload; a connection for many).
_FACTS: weakref.WeakKeyDictionary[IceConnection, _ConnectionFacts] = \
    weakref.WeakKeyDictionary()
_FACTS_LOCK = threading.Lock()


@dataclass
class Started:
    """A new image made by ``begin`` whose pixels ``finish`` writes.

    ``writing`` turns true just before the first pixels are sent: from then on a real
    server lets no new store write into the image, so a second ``finish`` of the same
    ``Started`` raises ``UploadInterrupted`` instead of trying, unless every store was
    closed (``written``): then only the completing update is made again, if missing.
    """

    image_id: int
    group_id: int
    writing: bool = False
    #: Every store closed: the pixels are saved, only the completing update may be left.
    written: bool = False


class IceImageSink(AsyncClosing):
    """The Ice transport's ``ImageSink`` (and ``StagedImageSink``)."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings
        with _FACTS_LOCK:
            self._facts = _FACTS.setdefault(conn, _ConnectionFacts())

    async def aclose(self) -> None:
        return None

    # -- finding earlier attempts -----------------------------------------------------------

    def _find_complete(self, key: str) -> tuple[int, str] | None:
        """``(image id, description)`` of a completed upload with this key."""
        p = omero.sys.ParametersI()
        p.add("ns", rstring(PROVENANCE_NS))
        p.add("key", rstring(key))
        rows = self.conn.sf.getQueryService().projection(
            "select l.parent.id, l.parent.description from ImageAnnotationLink l "
            "join l.child a join a.mapValue mv "
            "where a.ns = :ns and mv.name = 'upload_key' and mv.value = :key "
            "order by l.parent.id", p, ALL_GROUPS)
        if not rows:
            return None
        return int(unwrap(rows[0][0])), unwrap(rows[0][1]) or ""

    def _find_partial(self, key: str, name: str) -> list[int]:
        """This user's images still marked as an upload in progress with this key."""
        p = omero.sys.ParametersI()
        p.add("marker", rstring(f"%{marker(key)}%"))
        p.add("name", rstring(name))
        p.addLong("uid", self.conn.info.user_id)
        # Narrowed by owner and name first: a description LIKE alone scans every image.
        rows = self.conn.sf.getQueryService().projection(
            "select i.id from Image i where i.details.owner.id = :uid and i.name = :name "
            "and i.description like :marker order by i.id", p, ALL_GROUPS)
        return [int(unwrap(row[0])) for row in rows]

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

    # -- what the connection asks once ------------------------------------------------------

    def _plane_limits(self) -> tuple[tuple[int, int] | None, bool]:
        """``(max plane (w, h) or None, whether float/double are exempt)``."""
        if self._facts.limits is None:
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
            self._facts.limits = (limit, override != "false")
        return self._facts.limits

    def _check_plane_size(self, ptype: PixelType, size_x: int, size_y: int) -> None:
        """Refuse, before anything is created, a plane the server cannot store."""
        limit, float_exempt = self._plane_limits()
        if limit is None or size_x * size_y <= limit[0] * limit[1]:
            return
        if ptype in PYRAMID_TYPES or (float_exempt and ptype in FLOAT_TYPES):
            return
        raise _too_large(ptype, size_x, size_y, limit, float_exempt)

    def _may_be_pyramid(self, ptype: PixelType, size_x: int, size_y: int) -> bool:
        """Whether the server may keep this image as a pyramid: only then is it asked
        (``PixelsService.requiresPixelsPyramid``: integer planes above the limit)."""
        limit, _exempt = self._plane_limits()
        return limit is None or (size_x * size_y > limit[0] * limit[1]
                                 and ptype in PYRAMID_TYPES)

    def _pixels_type(self, ptype: PixelType) -> Any:
        found = self._facts.pixel_types.get(ptype.value)
        if found is None:
            p = omero.sys.ParametersI()
            p.add("value", rstring(ptype.value))
            found = self.conn.sf.getQueryService().findByQuery(
                "from PixelsType as p where p.value = :value", p)
            if found is None:
                raise ServerError(f"The server has no pixel type {ptype.value!r}.")
            self._facts.pixel_types[ptype.value] = found
        return found

    def _dataset_group(self, dataset_id: int) -> int | None:
        """The group of a Dataset this user may add images to (None: may not)."""
        known = self._facts.dataset_groups.get(dataset_id)
        if known is not None:
            return known
        dataset = self.conn.sf.getQueryService().findByQuery(
            "select d from Dataset d where d.id = :id", params(id=dataset_id), ALL_GROUPS)
        if dataset is None:
            raise NotFound(f"Dataset {dataset_id} does not exist, or "
                           f"{self.conn.info.user} may not read it.")
        if not dataset.details.permissions.canLink():
            return None
        group = int(unwrap(dataset.details.group.id))
        self._facts.dataset_groups[dataset_id] = group
        return group

    # -- stage 1: find or create -------------------------------------------------------------

    async def begin(self, pixels: np.ndarray, spec: NewImage
                    ) -> tuple[UploadedImage, Started | None]:
        """Find a completed upload of ``spec.client_key`` (``(image, None)``), or set aside
        incomplete ones and create the image (``(image, Started)``; ``finish`` writes it).

        One round trip of look-ups that run together, then one ``createImage``.
        """
        ptype = PixelType.from_dtype(pixels.dtype)
        t, z, c, size_y, size_x = pixels.shape
        found: dict[str, Any] = {}

        async def ask(what: str, label: str, func: Any, *args: Any) -> None:
            found[label] = await self.conn.call(func, *args, what=what)

        async with task_group() as tg:
            tg.start_soon(ask, "reading the server's maximum plane size", "limits",
                          self._check_plane_size, ptype, size_x, size_y)
            tg.start_soon(ask, "looking for an earlier upload", "complete",
                          self._find_complete, spec.client_key)
            tg.start_soon(ask, "looking for an earlier upload", "partial",
                          self._find_partial, spec.client_key, spec.name)
            tg.start_soon(ask, f"reading pixel type {ptype.value}", "ptype",
                          self._pixels_type, ptype)
            if spec.dataset_id is not None:
                tg.start_soon(ask, f"reading Dataset {spec.dataset_id}", "group",
                              self._dataset_group, spec.dataset_id)
        group_id = self.conn.info.group_id
        if spec.dataset_id is not None:
            if found["group"] is None:
                if found["complete"] is None:
                    raise PermissionDenied(
                        f"{self.conn.info.user} may not add images to Dataset "
                        f"{spec.dataset_id}.",
                        hint="Choose a dataset you own, or one in a read-write group.")
            else:
                group_id = found["group"]
        if found["complete"] is not None:
            # Found again (a retry after a lost reply, or a rerun): finish what may be
            # missing, but record its provenance only once.
            image_id, description = found["complete"]
            await self.conn.call(self._complete_again, image_id, description, spec, group_id,
                                 what=f"completing image {image_id}")
            return UploadedImage(image_id, spec.name, spec.dataset_id, reused=True), None
        for image_id in found["partial"]:
            log.info("upload %s: setting aside image %s left incomplete by an earlier "
                     "attempt", spec.client_key[:8], image_id)
            await self.conn.call(self._abandon, image_id, spec.client_key,
                                 what=f"setting aside incomplete image {image_id}")
        description = f"{spec.description}\n{marker(spec.client_key)}".strip()
        image_id = await self.conn.call(
            lambda: int(unwrap(self.conn.sf.getPixelsService().createImage(
                size_x, size_y, z, t, list(range(c)), found["ptype"], spec.name,
                description, {"omero.group": str(group_id)}))),
            what=f"creating image {spec.name!r}")
        return (UploadedImage(image_id, spec.name, spec.dataset_id, reused=False),
                Started(image_id, group_id))

    def _complete_again(self, image_id: int, description: str, spec: NewImage,
                        group_id: int) -> None:
        """A found upload: its Dataset link and clean description, if missing."""
        sf = self.conn.sf
        ctx = {"omero.group": str(group_id)}
        if spec.dataset_id is not None:
            linked = sf.getQueryService().projection(
                "select l.id from DatasetImageLink l where l.parent.id = :d and "
                "l.child.id = :i", params(d=spec.dataset_id, i=image_id), ALL_GROUPS)
            if not linked:
                sf.getUpdateService().saveObject(_dataset_link(spec.dataset_id, image_id),
                                                 ctx)
        if description != spec.description:
            image = sf.getQueryService().get("Image", image_id, ctx)
            image.setDescription(rstring(spec.description))
            sf.getUpdateService().saveObject(image, ctx)

    # -- stage 2: write and complete ---------------------------------------------------------

    async def finish(self, pixels: np.ndarray, spec: NewImage, started: Started
                     ) -> UploadedImage:
        """Write the pixels of an image ``begin`` made, then complete it.

        A staged upload goes on behind a pipeline that reads its next images over the
        same connection, so it sends whole planes (up to the message limit) through as
        few stores as possible: each of its calls in sequence has a reply that may wait
        behind read data on the server → client link. Smaller pieces kept a read's
        request from waiting behind a whole plane on the other link (a 4 × 2048² read
        during an upload: +0.05–0.10 s instead of +0.18–0.28 s at wan) but added
        sequential calls, and the pipeline at wan ran slower with them (8 image sets:
        15.3–16.3 s with whole planes, 16.4–17.0 s in 1 MiB pieces, 16.2–21.9 s in
        2–4 MiB pieces).
        """
        return await self._finish(pixels, spec, started, piece_bytes=self._max_bytes())

    async def _finish(self, pixels: np.ndarray, spec: NewImage, started: Started, *,
                      piece_bytes: int, min_stores: int = 1) -> UploadedImage:
        """``finish`` in pieces of at most ``piece_bytes`` through at least
        ``min_stores`` stores (when there are that many pieces)."""
        if started.written:
            # A retry after the pixels were saved (the completing update failed, or its
            # reply was lost): complete the image unless that already happened.
            found = await self.conn.call(self._find_complete, spec.client_key,
                                         what="looking for an earlier upload")
            if found is None or found[0] != started.image_id:
                image = await self.conn.call(self._fetch, started.image_id,
                                             what=f"finishing image {started.image_id}")
                ranges = await anyio.to_thread.run_sync(channel_ranges, pixels)
                await self.conn.call(self._complete, image, ranges, spec, started.group_id,
                                     what=f"finishing image {started.image_id}")
            return UploadedImage(started.image_id, spec.name, spec.dataset_id, reused=False)
        if started.writing:
            raise UploadInterrupted(
                f"The upload of image {started.image_id} ({spec.name!r}) stopped after its "
                "first pixels were written; the server lets no new connection write into "
                "it.", image_id=started.image_id, name=spec.name,
                hint="Run the same upload again: the incomplete image is set aside and "
                     "made anew (never duplicated).")
        ptype = PixelType.from_dtype(pixels.dtype)
        try:
            await self._write(started, pixels, ptype, spec, piece_bytes, min_stores)
        except PlaneTooLarge:
            # The server wants a pyramid its writer cannot hold: nothing usable was
            # written, so the new image goes again at once.
            await self.conn.call(self._abandon, started.image_id, spec.client_key,
                                 what=f"removing image {started.image_id}")
            raise
        return UploadedImage(started.image_id, spec.name, spec.dataset_id, reused=False)

    async def upload(self, pixels: np.ndarray, spec: NewImage) -> UploadedImage:
        # Stores are made after ``begin``, not beside it: the Pixels id (which needs the
        # image) comes before the binds anyway, and a new store's router registration
        # (Glacier2 ``addProxies``, on its proxy's first use) holds up calls running
        # beside it (measured at 50 ms per call: the first write 100 ms later).
        image, started = await self.begin(pixels, spec)
        if started is None:
            return image
        return await self._finish(pixels, spec, started, piece_bytes=min(
            PIECE_BYTES, self._max_bytes()))

    # -- writing ---------------------------------------------------------------------------

    def _fetch(self, image_id: int) -> Any:
        """The new image with its pixels, channels and logical channels, loaded."""
        image = self.conn.sf.getQueryService().findByQuery(
            "select i from Image i join fetch i.pixels p join fetch p.channels c "
            "join fetch c.logicalChannel left outer join fetch c.statsInfo "
            "where i.id = :id", params(id=image_id), ALL_GROUPS)
        if image is None:
            raise ServerError(f"Image {image_id} has no pixels on the server.")
        return image

    def _pixels_id(self, image_id: int) -> int:
        """The new image's Pixels id (a projection: cheap, unlike the loaded image)."""
        rows = self.conn.sf.getQueryService().projection(
            "select p.id from Pixels p where p.image.id = :id order by p.id",
            params(id=image_id), ALL_GROUPS)
        if not rows:
            raise ServerError(f"Image {image_id} has no pixels on the server.")
        return int(unwrap(rows[0][0]))

    def _new_store(self, ctx: dict[str, str]) -> Any:
        return self.conn.sf.createRawPixelsStore(ctx)

    def _stores_wanted(self, pixels: np.ndarray, piece_bytes: int, min_stores: int
                       ) -> int | None:
        """How many stores write ``pixels`` in pieces of ``piece_bytes`` (one if the
        image may be a pyramid); None while the server's plane limits are not known."""
        if self._facts.limits is None:
            return None
        ptype = PixelType.from_dtype(pixels.dtype)
        t, z, c, y, x = pixels.shape
        if self._may_be_pyramid(ptype, x, y):
            return 1
        pieces = t * z * c * _strips_per_plane(y, x, ptype, piece_bytes)
        wanted = stores_for(pieces, self.settings.ice.stores_per_image,
                            pixels.size * ptype.bytes_per_pixel)
        return max(wanted, min(min_stores, pieces, self.settings.ice.stores_per_image))

    @staticmethod
    def _bind(store: Any, pixels_id: int, ctx: dict[str, str]) -> None:
        store.setPixelsId(pixels_id, True, ctx)

    async def _write(self, started: Started, pixels: np.ndarray, ptype: PixelType,
                     spec: NewImage, piece_bytes: int, min_stores: int) -> None:
        """Write every plane in pieces of at most ``piece_bytes`` (strips of a plane)
        through at least ``min_stores`` stores when there are that many pieces, close
        every store (which saves), then complete the image."""
        ctx = {"omero.group": str(started.group_id)}
        what = f"uploading image {started.image_id}"
        y, x = pixels.shape[-2:]
        maybe_pyramid = await self.conn.call(self._may_be_pyramid, ptype, x, y, what=what)
        # The limits are known by now (``begin`` read them): no call is made here.
        wanted = self._stores_wanted(pixels, piece_bytes, min_stores) or 1
        stores: list[Any] = []
        got: dict[str, Any] = {}

        async def ranges() -> None:
            # The channels' minima and maxima, worked out while the planes travel
            # (numpy lets go of the GIL) instead of after them.
            got["ranges"] = await anyio.to_thread.run_sync(channel_ranges, pixels)

        async def fetch() -> None:
            got["image"] = await self.conn.call(self._fetch, started.image_id, what=what)

        async def find_pixels() -> None:
            got["pixels_id"] = await self.conn.call(self._pixels_id, started.image_id,
                                                    what=what)

        async def new_store() -> None:
            stores.append(await self.conn.call(self._new_store, ctx, what=what))

        try:
            # The Pixels id and the stores at once; then every store is bound before
            # the first write (a store bound after the pixel file exists is read-only).
            # The image with its channels, which only the completing update needs, is
            # loaded while the planes travel.
            async with task_group() as tg:
                tg.start_soon(find_pixels)
                for _ in range(wanted):
                    tg.start_soon(new_store)
            async with task_group() as outer:
                outer.start_soon(ranges)
                outer.start_soon(fetch)
                await self._write_stores(stores, got["pixels_id"], pixels, ptype, started,
                                         ctx, x, y, maybe_pyramid, what, piece_bytes)
            image = got["image"]
            closing, stores = stores, []
            async with task_group() as tg:
                for store in closing:
                    tg.start_soon(lambda s: self.conn.call(s.close, ctx, what=what), store)
            started.written = True
        except BaseException:
            # This attempt is over; a retry makes a new image (never reopens this one).
            threading.Thread(target=self._close_quietly_all, args=(stores, ctx), daemon=True,
                             name="close-stores").start()
            raise
        await self.conn.call(self._complete, image, got["ranges"], spec, started.group_id,
                             what=f"finishing image {started.image_id}")

    async def _write_stores(self, stores: list[Any], pixels_id: int, pixels: np.ndarray,
                            ptype: PixelType, started: Started, ctx: dict[str, str],
                            x: int, y: int, maybe_pyramid: bool, what: str,
                            piece_bytes: int) -> None:
        """Bind the stores (all before the first write) and write every plane."""
        if maybe_pyramid:
            first = stores[0]
            await self.conn.call(self._bind, first, pixels_id, ctx, what=what)
            # Asked before anything else: on a pyramid writer most other calls
            # (byte width, resolution levels…) would end its writing mode.
            pyramid = await self.conn.call(
                lambda: bool(first.requiresPixelsPyramid(ctx)), what=what)
            if pyramid and ptype not in PYRAMID_TYPES:
                # Reached only when the server hid its plane limits from this user.
                raise _too_large(ptype, x, y, None, True)
            started.writing = True
            if pyramid:
                await self._write_pyramid(first, pixels, ptype, ctx, what)
            else:
                await self._write_planes(stores, pixels, ptype, ctx, what, piece_bytes)
        else:
            async with task_group() as tg:
                for store in stores:
                    tg.start_soon(lambda s: self.conn.call(self._bind, s, pixels_id,
                                                           ctx, what=what), store)
            started.writing = True
            await self._write_planes(stores, pixels, ptype, ctx, what, piece_bytes)

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
                            ctx: dict[str, str], what: str, limit: int) -> None:
        """Planes (in strips when over ``limit`` bytes) concurrently, one call per store."""
        t, z, c, y, x = pixels.shape
        send, receive = anyio.create_memory_object_stream[Any](len(stores))
        for store in stores:
            send.send_nowait(store)
        written = dict.fromkeys(range(len(stores)), 0)  # pieces per store, for the log
        index = {id(store): n for n, store in enumerate(stores)}

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
                written[index[id(store)]] += 1
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
        pieces = [written[n] for n in range(len(stores))]
        log.debug("%s: %d pieces through %d stores (%s)", what, sum(pieces), len(stores),
                  pieces, extra={"pieces_per_store": pieces})

    # -- completing -------------------------------------------------------------------------

    def _complete(self, image: Any, ranges: list[tuple[float, float]], spec: NewImage,
                  group_id: int) -> None:
        """Channel names and statistics, physical sizes, the Dataset link, provenance and
        the clean description in one ``saveArray``: one transaction, so the annotation
        that marks the upload complete appears with everything it vouches for."""
        sf = self.conn.sf
        ctx = {"omero.group": str(group_id)}
        image_id = int(unwrap(image.getId()))
        px = image.getPrimaryPixels()
        pixels_id = int(unwrap(px.getId()))
        changed: list[Any] = []
        for index, channel in enumerate(px.copyChannels()):
            low, high = ranges[index]
            lc = channel.getLogicalChannel()
            lc.setName(rstring(spec.channel_names[index]))
            stats = channel.getStatsInfo()
            if stats is None or not stats.isLoaded():
                # IPixels.setChannelGlobalMinMax does the same: a new StatsInfo saved
                # through its channel (ome/omero-server PixelsImpl).
                stats = omero.model.StatsInfoI()
                channel.setStatsInfo(stats)
            stats.setGlobalMin(rdouble(low))
            stats.setGlobalMax(rdouble(high))
            # The stores' close updated the Pixels (its SHA-1): never save the copy
            # loaded before the writing.
            channel.setPixels(omero.model.PixelsI(pixels_id, False))
            changed += [lc, channel]
        size = spec.physical_size
        if size.x is not None or size.y is not None or size.z is not None:
            fresh = sf.getPixelsService().retrievePixDescription(pixels_id, ctx)
            fresh.unloadChannels()
            for axis, value in (("X", size.x), ("Y", size.y), ("Z", size.z)):
                if value is not None:
                    getattr(fresh, f"setPhysicalSize{axis}")(
                        omero.model.LengthI(value, UnitsLength.MICROMETER))
            changed.append(fresh)
        image.unloadPixels()
        image.setDescription(rstring(spec.description))
        changed.append(image)
        if spec.dataset_id is not None:
            changed.append(_dataset_link(spec.dataset_id, image_id))
        changed.append(_provenance_link(image_id, spec))
        sf.getUpdateService().saveArray(changed, ctx)


def channel_ranges(pixels: np.ndarray) -> list[tuple[float, float]]:
    """``(min, max)`` of every channel of a ``(T, Z, C, Y, X)`` array."""
    return [(float(pixels[:, :, c].min()), float(pixels[:, :, c].max()))
            for c in range(pixels.shape[2])]


def _dataset_link(dataset_id: int, image_id: int) -> Any:
    link = omero.model.DatasetImageLinkI()
    link.setParent(omero.model.DatasetI(rlong(dataset_id), False))
    link.setChild(omero.model.ImageI(rlong(image_id), False))
    return link


def _provenance_link(image_id: int, spec: NewImage) -> Any:
    """The map annotation that records the upload's key and sources, linked to the image."""
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
    return link


#: Largest piece of an upload in one call (``upload``): the server stores a piece only
#: once all of it has arrived, so the last piece's storing comes after the wire is done;
#: a 2048² uint16 plane in two pieces halves that tail. Measured at campus (2 ms,
#: 1 Gbit/s), 3 × 2048² uint16 through 2 stores, medians of 9–11 on a busy machine:
#: 0.35–0.39 s in 4 MiB pieces against 0.39–0.41 s in whole planes through 3 stores,
#: one call fewer (20) and 25 % less client CPU.
PIECE_BYTES = 4 * 1024 * 1024
#: Pieces each extra store must have to write: a store costs three calls, and on a
#: real server its ``close`` digests the whole pixel file (``RawPixelsBean.save``), so
#: many small pieces go faster through few stores.
PIECES_PER_STORE = 8
#: Bytes that earn a store of their own whatever the number of pieces: big pieces travel
#: for longer than the server takes to store them (4 MiB is 34 ms at 1 Gbit/s), so
#: concurrent stores let one piece be stored while the next is on the wire; two stores
#: already keep the link busy, and each more costs three calls and, on a real server, a
#: digest of the whole pixel file at its close. Measured on the emulator at campus
#: (2 ms, 1 Gbit/s), 3 planes of 2048² uint16: 0.23 s of writing through 3 stores
#: against 0.30 s through one; through 2 stores in 4 MiB pieces as fast as through 3.
BYTES_PER_STORE = 12 * 1024 * 1024


def stores_for(pieces: int, stores_per_image: int, nbytes: int = 0) -> int:
    """How many stores write ``pieces`` planes or strips holding ``nbytes``: one per
    ``PIECES_PER_STORE`` pieces or per ``BYTES_PER_STORE`` bytes begun (so anything over
    12 MiB, e.g. two 2048² uint16 planes, has two), whichever gives more, at most one
    per piece and ``ice.stores_per_image``, at least one."""
    wanted = max(pieces // PIECES_PER_STORE, -(-nbytes // BYTES_PER_STORE))
    return max(1, min(stores_per_image, pieces, wanted))


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

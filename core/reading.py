"""Reading one image through the session manager and the configured read transports.

``ImageReader`` validates requests against the image's metadata, keeps its pixel
source open across reads (stores are reused), reopens it after the session was
renewed, and retries a read once when the session lapsed mid-read.

``MetadataCache`` holds ``ImageMeta`` for many images, fetched in batches
(``Connection.image_metas``) when the list of images to read is known beforehand
(CellProfiler's image sets), so that opening a reader per image costs no round trip.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import anyio
import numpy as np

from cellprofiler_omero.core.errors import OmeroError, UnsupportedData
from cellprofiler_omero.core.model import ImageMeta, PixelRequest, PixelType, Region
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.registry import FallbackPixelSource
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)


MetaKey = tuple[str | None, int | None, int]


def meta_key(ref: ObjectRef) -> MetaKey:
    """What names one image on one server, whatever link form named it."""
    return (ref.host.lower() if ref.host else None, ref.port, ref.id)


class MetadataCache:
    """``ImageMeta`` by image, filled in batches; the ``limit`` most recent are kept.

    Thread-safe (CellProfiler's threads ask, the runtime's loop fills).
    ``queries`` counts the batched calls made, ``hits`` the look-ups answered.
    """

    def __init__(self, limit: int = 20000) -> None:
        self.limit = limit
        self._metas: OrderedDict[MetaKey, ImageMeta] = OrderedDict()
        self._lock = threading.Lock()
        self.queries = 0
        self.hits = 0

    def get(self, ref: ObjectRef) -> ImageMeta | None:
        """The cached metadata of ``ref``'s image, or None."""
        with self._lock:
            meta = self._metas.get(meta_key(ref))
            if meta is not None:
                self._metas.move_to_end(meta_key(ref))
                self.hits += 1
            return meta

    def put(self, ref: ObjectRef, meta: ImageMeta) -> None:
        with self._lock:
            self._metas[meta_key(ref)] = meta
            self._metas.move_to_end(meta_key(ref))
            while len(self._metas) > self.limit:
                self._metas.popitem(last=False)

    def __contains__(self, ref: ObjectRef) -> bool:
        with self._lock:
            return meta_key(ref) in self._metas

    def clear(self) -> None:
        with self._lock:
            self._metas.clear()

    async def prefetch(self, manager: SessionManager, refs: Iterable[ObjectRef]) -> int:
        """Fetch the metadata of the images in ``refs`` not cached yet, in batches per
        server (``Connection.image_metas``); how many were fetched.

        An optimisation only: a failure is logged and the images are read one by one
        later, where the error (a login needed, an image not found) is reported.
        """
        by_server: dict[tuple[str | None, int | None], list[ObjectRef]] = {}
        for ref in refs:
            if ref.kind is Kind.IMAGE and ref not in self:
                by_server.setdefault((meta_key(ref)[0], ref.port), []).append(ref)
        fetched = 0
        for group in by_server.values():
            ids = list(dict.fromkeys(r.id for r in group))
            # At most the cache's size: more would push out what was just fetched.
            ids = ids[:self.limit]
            try:
                metas = await self.manager_call(manager, group[0], ids)
            except OmeroError as exc:
                log.info("metadata of %d images not prefetched (%s); reading them one by "
                         "one", len(ids), exc.message)
                continue
            for ref in group:
                meta = metas.get(ref.id)
                if meta is not None:
                    self.put(ref, meta)
            fetched += len(metas)
        return fetched

    async def manager_call(self, manager: SessionManager, ref: ObjectRef, ids: list[int]
                           ) -> dict[int, ImageMeta]:
        self.queries += 1
        return await manager.call(lambda c: c.image_metas(ids), ref,
                                  what=f"reading the metadata of {len(ids)} images")


class ImageReader:
    """Reads regions of one image; one instance per image, reused across reads.

    ``meta``, when the caller already has the image's metadata (a ``MetadataCache``),
    spares the look-up.
    """

    def __init__(self, manager: SessionManager, ref: ObjectRef,
                 meta: ImageMeta | None = None) -> None:
        if ref.kind is not Kind.IMAGE:
            raise ValueError(f"{ref} is not an image")
        self.manager = manager
        self.ref = ref
        self._meta: ImageMeta | None = None
        self._given = meta
        self._source: FallbackPixelSource | None = None
        self._source_conn: Connection | None = None
        self._lock: anyio.Lock | None = None

    async def metadata(self) -> ImageMeta:
        """The image's metadata (fetched once)."""
        if self._meta is None:
            meta = self._given
            if meta is None:
                meta = await self.manager.call(lambda c: c.image_meta(self.ref.id), self.ref)
            if meta.pixel_type in (PixelType.COMPLEX, PixelType.DOUBLE_COMPLEX):
                raise UnsupportedData(
                    f"Image {self.ref.id} has {meta.pixel_type.value} pixels, which "
                    "CellProfiler cannot analyse.",
                    hint="Convert the image to a real-valued type on the server.")
            self._meta = meta
        return self._meta

    async def _source_for(self, conn: Connection) -> FallbackPixelSource:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # concurrent reads must share one source (and its stores)
            if self._source is None or self._source_conn is not conn:
                if self._source is not None:
                    await self._source.aclose()
                meta = await self.metadata()
                self._source = self.manager.registry.open_reader(conn, self.ref, meta)
                self._source_conn = conn
            return self._source

    async def read(self, *, z: Sequence[int] = (0,), c: Sequence[int] | None = None,
                   t: int = 0, region: Region | None = None, level: int = 0) -> np.ndarray:
        """Pixels shaped ``(len(z), len(c), h, w)``; ``c=None`` reads every channel."""
        meta = await self.metadata()
        channels = tuple(range(meta.size_c)) if c is None else tuple(c)
        for zz in z:
            for cc in channels:
                meta.check_plane(z=zz, c=cc, t=t)
        size_x, size_y = meta.level_size(level)
        if region is not None and (region.x + region.w > size_x or region.y + region.h > size_y):
            raise IndexError(
                f"Region {region.x},{region.y} {region.w}×{region.h} is outside image "
                f"{self.ref.id}'s {size_x}×{size_y} plane (level {level}).")
        request = PixelRequest(z=tuple(z), c=channels, t=t, region=region, level=level)

        async def op(conn: Connection) -> np.ndarray:
            source = await self._source_for(conn)
            return await source.read(request)

        data = await self.manager.call(op, self.ref)
        expected = (len(request.z), len(channels),
                    region.h if region else size_y, region.w if region else size_x)
        if data.shape != expected:
            raise RuntimeError(f"transport returned {data.shape}, expected {expected}")
        return data

    @property
    def transport(self) -> str:
        return self._source.transport if self._source is not None else ""

    async def aclose(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            await source.aclose()

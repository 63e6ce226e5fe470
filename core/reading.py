"""Reading one image through the session manager and the configured read transports.

``ImageReader`` validates requests against the image's metadata, keeps its pixel
source open across reads (stores are reused), reopens it after the session was
renewed, and retries a read once when the session lapsed mid-read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import numpy as np

from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.model import ImageMeta, PixelRequest, PixelType, Region
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.registry import FallbackPixelSource
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)


class ImageReader:
    """Reads regions of one image; one instance per image, reused across reads."""

    def __init__(self, manager: SessionManager, ref: ObjectRef) -> None:
        if ref.kind is not Kind.IMAGE:
            raise ValueError(f"{ref} is not an image")
        self.manager = manager
        self.ref = ref
        self._meta: ImageMeta | None = None
        self._source: FallbackPixelSource | None = None
        self._source_conn: Connection | None = None
        self._lock: anyio.Lock | None = None

    async def metadata(self) -> ImageMeta:
        """The image's metadata (fetched once)."""
        if self._meta is None:
            self._meta = await self.manager.call(lambda c: c.image_meta(self.ref.id),
                                                 self.ref)
            if self._meta.pixel_type in (PixelType.COMPLEX, PixelType.DOUBLE_COMPLEX):
                raise UnsupportedData(
                    f"Image {self.ref.id} has {self._meta.pixel_type.value} pixels, which "
                    "CellProfiler cannot analyse.",
                    hint="Convert the image to a real-valued type on the server.")
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

"""Pixels over Ice: a bounded pool of RawPixelsStore handles per image, tiles in parallel.

Each requested plane is split into tiles under ``transfer.max_chunk_bytes`` (far below the
message limit); every (plane, tile) becomes one ``getTile`` call on a free store;
the bytes are decoded straight into one preallocated array. Stores are reused across
reads and closed with the source.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio
import numpy as np

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.model import ImageMeta, PixelRequest, Region
from cellprofiler_omero.core.pixels import decode_into, plan_tiles
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.core.tasks import task_group
from cellprofiler_omero.transports.ice.connection import IceConnection
from cellprofiler_omero.transports.ice.errors import wait_for_pyramid

log = logging.getLogger(__name__)


def close_quietly(store: Any, ctx: dict[str, str]) -> None:
    """Close a RawPixelsStore, ignoring failures (the session or connection may be gone)."""
    try:
        store.close(ctx)
    except Exception as exc:
        log.debug("closing a store failed: %s", type(exc).__name__)


class StorePool:
    """Up to ``size`` RawPixelsStore handles bound to one image, lent one at a time.

    For reads only: a failed store is replaced by opening another, which a writer must
    never do (on a real server a store bound after the first write is read-only).
    """

    def __init__(self, conn: IceConnection, meta: ImageMeta, size: int) -> None:
        self.conn = conn
        self.meta = meta
        self.ctx = {"omero.group": str(meta.group_id if meta.group_id is not None else -1)}
        self._size = size
        self._idle: list[tuple[Any, int]] = []  # (store, its RawPixelsStore level)
        self._count = 0
        self._slots = anyio.Semaphore(size)
        self._lock = anyio.Lock()
        self.tile_size: tuple[int, int] | None = None

    def _open(self) -> tuple[Any, int]:
        if self.meta.pixels_id is None:
            raise ValueError(f"image {self.meta.id}'s metadata has no Pixels id")
        store = self.conn.sf.createRawPixelsStore(self.ctx)
        try:
            # A real server raises MissingPyramidException here while it builds the
            # pyramid of a new big image; the store is then unbound and useless.
            store.setPixelsId(self.meta.pixels_id, True, self.ctx)
            if self.tile_size is None and len(self.meta.levels) > 1:
                # Only pyramids need their tiles aligned to the server's.
                w, h = store.getTileSize(self.ctx)
                self.tile_size = (int(w), int(h))
        except BaseException:
            close_quietly(store, self.ctx)
            raise
        return store, len(self.meta.levels or ((0, 0),)) - 1

    async def borrow(self) -> tuple[Any, int]:
        await self._slots.acquire()
        async with self._lock:
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return await self.conn.call(self._open, what=f"opening image {self.meta.id}")
        except BaseException:
            async with self._lock:
                self._count -= 1
            self._slots.release()
            raise

    async def give_back(self, store: Any, level: int, *, healthy: bool = True) -> None:
        """Return a borrowed store; an unhealthy one is closed (best effort) and replaced
        by a new one on a later ``borrow`` (reads only: writers never replace a store)."""
        async with self._lock:
            if healthy:
                self._idle.append((store, level))
            else:
                self._count -= 1
        self._slots.release()
        if not healthy:
            # In a daemon thread: the call may wait on a dropped connection, and this
            # often runs while the task is being cancelled.
            threading.Thread(target=close_quietly, args=(store, self.ctx), daemon=True,
                             name="close-store").start()

    async def close(self) -> None:
        async with self._lock:
            stores, self._idle = self._idle, []

        def run() -> None:
            for store, _ in stores:
                close_quietly(store, self.ctx)

        if stores:
            await anyio.to_thread.run_sync(run)


class IcePixelSource(AsyncClosing):
    """The Ice transport's ``PixelSource`` for one image."""

    transport = "ice"

    def __init__(self, conn: IceConnection, meta: ImageMeta, settings: Settings) -> None:
        self.conn = conn
        self.meta = meta
        self.settings = settings
        self.pool = StorePool(conn, meta, settings.ice.stores_per_image)

    async def metadata(self) -> ImageMeta:
        return self.meta

    async def read(self, request: PixelRequest) -> np.ndarray:
        return await wait_for_pyramid(lambda: self._read(request), image_id=self.meta.id,
                                      wait_seconds=self.settings.ice.pyramid_wait_seconds)

    async def _read(self, request: PixelRequest) -> np.ndarray:
        meta = self.meta
        size_x, size_y = meta.level_size(request.level)
        region = request.region or Region(0, 0, size_x, size_y)
        out = np.empty((len(request.z), len(request.c), region.h, region.w),
                       dtype=meta.pixel_type.dtype)
        # The server numbers levels the other way round: n-1 is full resolution.
        native_level = len(meta.levels or ((0, 0),)) - 1 - request.level
        if self.pool.tile_size is None and len(meta.levels) > 1:
            store, level = await self.pool.borrow()
            await self.pool.give_back(store, level)
        tiles = plan_tiles(region, meta.pixel_type.bytes_per_pixel,
                           self.settings.transfer.max_chunk_bytes,
                           self.pool.tile_size if len(meta.levels) > 1 else None)
        what = f"reading image {meta.id}"

        async def fetch(zi: int, ci: int, tile: Any) -> None:
            z, c = request.z[zi], request.c[ci]
            r = tile.region
            store, level = await self.pool.borrow()
            healthy = False
            try:
                def get() -> bytes:
                    if level != native_level:
                        store.setResolutionLevel(native_level, self.pool.ctx)
                    data: bytes = store.getTile(z, c, request.t, r.x, r.y, r.w, r.h,
                                                self.pool.ctx)
                    return data

                data = await self.conn.call(get, what=what)
                decode_into(out[zi, ci], data, meta.pixel_type, tile)
                healthy = True
            finally:
                await self.pool.give_back(store, native_level if healthy else level,
                                          healthy=healthy)

        async with task_group() as tg:
            for zi in range(len(request.z)):
                for ci in range(len(request.c)):
                    for tile in tiles:
                        tg.start_soon(fetch, zi, ci, tile)
        return out

    async def aclose(self) -> None:
        await self.pool.close()

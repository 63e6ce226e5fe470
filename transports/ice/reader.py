"""Pixels over Ice: RawPixelsStore handles pooled per connection, tiles in parallel.

Each requested plane is split into tiles under ``transfer.max_chunk_bytes`` (far below the
message limit); every (plane, tile) becomes one ``getTile`` call on a free store;
the bytes are decoded straight into one preallocated array.

Stores outlive the images they read. A connection keeps one ``StorePool`` per group, and
a store moves to the next image with ``setPixelsId`` (a real server's
``RawPixelsBean.setPixelsId`` closes the old buffer and opens the new one on the same
stateful service), so opening an image costs no ``createRawPixelsStore`` and no
``close``: a first read of an image that some store already served costs its tiles plus
one ``setPixelsId`` per store it borrows. Pools are kept per group because every call
on a store carries the image's group in its context, as BlitzGateway does. The pool's
stores are closed with the connection.

A tile's store is bound (``setPixelsId``, or opened) in the same worker thread that
then fetches and decodes the tile: one hop off the event loop per tile, not two.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
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


def full_level(meta: ImageMeta) -> int:
    """RawPixelsStore's number for full resolution (it counts from the smallest level)."""
    return len(meta.levels or ((0, 0),)) - 1


@dataclass
class PooledStore:
    """A RawPixelsStore proxy, the Pixels it is bound to and its resolution level.

    ``bound`` is False while the store still has to be bound to ``pixels_id`` (by
    ``StorePool.bind``, in a worker thread); ``proxy`` is None until a new store is opened.
    """

    proxy: Any
    pixels_id: int
    level: int
    bound: bool = True


@dataclass
class PoolStats:
    """What a pool has cost in calls beyond the tiles (for tests and the benchmark)."""

    opened: int = 0  # createRawPixelsStore + setPixelsId
    rebound: int = 0  # setPixelsId on an idle store of another image
    reused: int = 0  # borrowed already bound to the image: no call


class StorePool:
    """Up to ``size`` RawPixelsStore handles of one connection and group, for reads.

    A borrower gets an idle store already bound to its image if there is one, else the
    least recently used idle store rebound to it, else a new store while fewer than
    ``size`` exist. For reads only: a failed store is closed and replaced by opening
    another, which a writer must never do (on a real server a store bound after the
    first write is read-only).
    """

    def __init__(self, conn: IceConnection, group_id: int, size: int) -> None:
        self.conn = conn
        self.ctx = {"omero.group": str(group_id)}
        self.size = size
        self.stats = PoolStats()
        self._idle: list[PooledStore] = []  # least recently returned first
        self._slots = anyio.Semaphore(size)
        self._lock = threading.Lock()
        self._closed = False

    def _take_idle(self, pixels_id: int) -> PooledStore | None:
        with self._lock:
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index].pixels_id == pixels_id:
                    return self._idle.pop(index)
            return self._idle.pop(0) if self._idle else None

    def bind(self, store: PooledStore) -> None:
        """Bind a store from ``take`` to its Pixels (blocking: run it in a worker thread).

        Rebinds an idle store (``setPixelsId``) or opens a new one. If this raises, the
        store must go back unhealthy (``give_back(store, healthy=False)``).
        """
        if store.bound:
            return
        opening = store.proxy is None
        if opening:
            proxy = self.conn.sf.createRawPixelsStore(self.ctx)
            try:
                # A real server raises MissingPyramidException here while it builds the
                # pyramid of a new big image; the store is then unbound and useless.
                proxy.setPixelsId(store.pixels_id, True, self.ctx)
            except BaseException:
                close_quietly(proxy, self.ctx)
                raise
            store.proxy = proxy
        else:
            store.proxy.setPixelsId(store.pixels_id, True, self.ctx)
        store.bound = True
        with self._lock:  # counted from worker threads
            if opening:
                self.stats.opened += 1
            else:
                self.stats.rebound += 1

    async def take(self, meta: ImageMeta) -> PooledStore:
        """A store for ``meta``'s Pixels, without the call that may bind it: the caller
        runs ``bind`` in the worker thread that then uses it (wait while ``size`` are
        lent out)."""
        if meta.pixels_id is None:
            raise ValueError(f"image {meta.id}'s metadata has no Pixels id")
        pixels_id = int(meta.pixels_id)
        await self._slots.acquire()
        idle = self._take_idle(pixels_id)
        if idle is not None and idle.pixels_id == pixels_id:
            self.stats.reused += 1
            return idle
        # The new buffer starts at full resolution, whatever the old one was set to.
        return PooledStore(None if idle is None else idle.proxy, pixels_id,
                           full_level(meta), bound=False)

    async def borrow(self, meta: ImageMeta) -> PooledStore:
        """A store bound to ``meta``'s Pixels (wait while ``size`` are lent out)."""
        store = await self.take(meta)
        try:
            await self.conn.call(self.bind, store, what=f"opening image {meta.id}")
        except BaseException:
            self.give_back(store, healthy=False)
            raise
        return store

    def give_back(self, store: PooledStore, *, healthy: bool = True) -> None:
        """Return a borrowed store; an unhealthy one (or one never bound) is closed (best
        effort) and replaced by a new one on a later ``borrow`` (reads only: writers
        never replace a store)."""
        try:
            if healthy and store.bound and not self._closed:
                with self._lock:
                    self._idle.append(store)
            else:
                self._discard(store)
        finally:
            self._slots.release()

    def _discard(self, store: PooledStore) -> None:
        if store.proxy is None:
            return  # never opened
        # In a daemon thread: the call may wait on a dropped connection, and this
        # often runs while the task is being cancelled.
        threading.Thread(target=close_quietly, args=(store.proxy, self.ctx), daemon=True,
                         name="close-store").start()

    def close_blocking(self) -> None:
        """Close the idle stores (blocking; the connection calls it as it closes)."""
        with self._lock:
            self._closed = True
            stores, self._idle = self._idle, []
        for store in stores:
            close_quietly(store.proxy, self.ctx)


def pool_for(conn: IceConnection, group_id: int, settings: Settings) -> StorePool:
    """The connection's store pool for images of ``group_id`` (made on first use)."""
    with conn.pool_lock:
        pool: StorePool | None = conn.store_pools.get(group_id)
        if pool is None:
            size = max(settings.ice.concurrency, settings.ice.stores_per_image)
            pool = conn.store_pools[group_id] = StorePool(conn, group_id, size)
        return pool


class IcePixelSource(AsyncClosing):
    """The Ice transport's ``PixelSource`` for one image (stores from the pool)."""

    transport = "ice"

    def __init__(self, conn: IceConnection, meta: ImageMeta, settings: Settings) -> None:
        self.conn = conn
        self.meta = meta
        self.settings = settings
        group = meta.group_id if meta.group_id is not None else -1
        self.pool = pool_for(conn, group, settings)
        # Read once: a plugin section's look-up checks whether the installed plugins
        # changed (a stat per sys.path folder).
        ice = settings.ice
        self._pyramid_wait = ice.pyramid_wait_seconds
        # An image uses at most this many of the pool's stores at once.
        self._own = anyio.Semaphore(ice.stores_per_image)
        self.tile_size: tuple[int, int] | None = None

    async def metadata(self) -> ImageMeta:
        return self.meta

    async def read(self, request: PixelRequest) -> np.ndarray:
        return await wait_for_pyramid(lambda: self._read(request), image_id=self.meta.id,
                                      wait_seconds=self._pyramid_wait)

    async def _tile_size(self) -> tuple[int, int] | None:
        """The server's tile size, which only pyramids need their tiles aligned to."""
        if self.tile_size is None and len(self.meta.levels) > 1:
            store = await self.pool.borrow(self.meta)
            healthy = False
            try:
                w, h = await self.conn.call(store.proxy.getTileSize, self.pool.ctx,
                                            what=f"reading image {self.meta.id}")
                self.tile_size = (int(w), int(h))
                healthy = True
            finally:
                self.pool.give_back(store, healthy=healthy)
        return self.tile_size

    async def _read(self, request: PixelRequest) -> np.ndarray:
        meta = self.meta
        size_x, size_y = meta.level_size(request.level)
        region = request.region or Region(0, 0, size_x, size_y)
        out = np.empty((len(request.z), len(request.c), region.h, region.w),
                       dtype=meta.pixel_type.dtype)
        # The server numbers levels the other way round: n-1 is full resolution.
        native_level = full_level(meta) - request.level
        tiles = plan_tiles(region, meta.pixel_type.bytes_per_pixel,
                           self.settings.transfer.max_chunk_bytes, await self._tile_size())
        what = f"reading image {meta.id}"
        ctx = self.pool.ctx

        async def fetch(zi: int, ci: int, tile: Any) -> None:
            z, c = request.z[zi], request.c[ci]
            r = tile.region
            async with self._own:
                store = await self.pool.take(meta)
                healthy = False
                try:
                    def get() -> None:
                        self.pool.bind(store)
                        if store.level != native_level:
                            store.proxy.setResolutionLevel(native_level, ctx)
                            store.level = native_level
                        data: bytes = store.proxy.getTile(z, c, request.t, r.x, r.y, r.w,
                                                          r.h, ctx)
                        # Decoded here, in the worker thread: numpy's byte-swapping
                        # copy releases the GIL, so tiles decode in parallel instead of
                        # one after another on the event loop's thread (~3 ms per
                        # 2048² uint16 plane), and the bytes are freed at once.
                        decode_into(out[zi, ci], data, meta.pixel_type, tile)

                    await self.conn.call(get, what=what)
                    healthy = True
                finally:
                    self.pool.give_back(store, healthy=healthy)

        async with task_group() as tg:
            for zi in range(len(request.z)):
                for ci in range(len(request.c)):
                    for tile in tiles:
                        tg.start_soon(fetch, zi, ci, tile)
        return out

    async def aclose(self) -> None:
        """Nothing to close: the stores go back to the connection's pool."""

"""Pixels over omero-ms-pixel-buffer: tiles fetched concurrently on one keep-alive session.

Each requested plane is split into tiles under ``transfer.max_chunk_bytes`` (the same plan as
the Ice transport, so both send comparable requests) and under the service's
``max_tile_pixels``; every (z, c, tile) is one ``GET`` run in a worker thread, bounded
by ``pixelbuffer.concurrency``, and decoded straight into one preallocated array.
Failures a retry may fix are retried with exponential backoff up to
``pixelbuffer.retries`` times, then surface as the transient ``ServerError``, so the
next configured read transport takes over.

A 404 is final for the image (``TileNotServed``, transient: the next transport reads
it). A 403 is final only when the session is alive (Ice answers a ping): then the
service cannot join sessions at all, and it is set aside until its next probe;
otherwise the ``AuthError`` goes up, the session manager renews the session once and
retries, and a 403 for the renewed session ends the same way.
"""

from __future__ import annotations

import logging
import random

import anyio
import anyio.to_thread
import numpy as np

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import OmeroError, ServerError
from cellprofiler_omero.core.model import ImageMeta, PixelRequest, Region
from cellprofiler_omero.core.pixels import Tile, decode_into, plan_tiles
from cellprofiler_omero.core.roles import AsyncClosing, Connection
from cellprofiler_omero.core.tasks import task_group
from cellprofiler_omero.transports.pixelbuffer.service import (
    DEFAULT_MAX_PLANE,
    FALLBACK_HINT,
    RetryableFailure,
    SessionRefused,
    TileClient,
    TileEndpoint,
    TileNotServed,
    TileQuery,
    mark_unavailable,
    mark_unserved,
)

log = logging.getLogger(__name__)

#: First retry delay; each further retry waits twice as long, up to ``BACKOFF_MAX_SECONDS``.
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (0-based), with jitter.

    The jitter spreads the retries of tiles that failed together, so a recovering
    service is not hit by all of them at the same instant.
    """
    delay: float = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** attempt)
    return delay * random.uniform(0.5, 1.0)


def resolution_for(meta: ImageMeta, level: int) -> int | None:
    """The service's resolution number for core ``level`` (``None``: single level).

    The service numbers resolutions from the smallest (0); the core from the full one.
    A single-level image gets no ``resolution`` parameter: not every service version
    accepts one for images without a pyramid.
    """
    count = len(meta.levels)
    if count <= 1:
        return None
    return count - 1 - level


class PixelBufferSource(AsyncClosing):
    """The pixel-buffer transport's ``PixelSource`` for one image.

    ``max_tile_pixels`` bounds every request (the service's NGFF buffer answers zeros
    above its ``max_plane_width × max_plane_height``).
    """

    transport = "pixelbuffer"

    def __init__(self, endpoint: TileEndpoint, connection: Connection, meta: ImageMeta,
                 settings: Settings,
                 max_tile_pixels: int = DEFAULT_MAX_PLANE[0] * DEFAULT_MAX_PLANE[1]) -> None:
        self.endpoint = endpoint
        self.meta = meta
        self.settings = settings
        self.max_tile_pixels = max_tile_pixels
        self._connection = connection
        self.client = TileClient(endpoint, connection.session_key, settings.pixelbuffer)
        self._limiter: anyio.CapacityLimiter | None = None
        self._failed = False
        #: Set once the service proved it cannot serve this image: every later read fails alike.
        self._not_served: TileNotServed | None = None

    def __repr__(self) -> str:
        return f"PixelBufferSource(image={self.meta.id}, {self.endpoint.display!r})"

    async def metadata(self) -> ImageMeta:
        return self.meta

    async def read(self, request: PixelRequest) -> np.ndarray:
        """An array shaped ``(len(z), len(c), h, w)`` in the image's dtype.

        Raises ``TileNotServed`` (transient) when the service cannot serve this image.
        """
        if self._not_served is not None:
            raise self._not_served.again()
        try:
            return await self._read(request)
        except TileNotServed as exc:
            raise self._give_up(exc, f"HTTP {exc.status}") from None
        except SessionRefused as exc:
            if not await self._session_alive():
                raise  # lapsed: the session manager renews it and asks again
            # Ice accepts the session the service refused: renewing cannot help, and
            # no other image will fare better, so the service waits for its next probe.
            mark_unavailable(self.endpoint, f"it refused a live session (HTTP {exc.status})")
            raise self._give_up(TileNotServed(
                f"The pixel-buffer service at {self.endpoint.display} refused the session "
                f"while reading image {self.meta.id} although the OMERO server accepts it "
                f"(HTTP {exc.status}); it may be configured for another server.",
                image_id=self.meta.id, status=exc.status, service=self.endpoint.display,
                hint=FALLBACK_HINT), f"HTTP {exc.status}") from None

    def _give_up(self, exc: TileNotServed, reason: str) -> TileNotServed:
        if self._not_served is None:
            self._not_served = exc
            mark_unserved(self.endpoint, self.meta.id, reason)
        return self._not_served

    async def _session_alive(self) -> bool:
        try:
            await self._connection.ping()
        except OmeroError:
            return False
        return True

    async def _read(self, request: PixelRequest) -> np.ndarray:
        meta = self.meta
        if self._limiter is None:
            # Matches the connection pool size: a thread never waits for a connection.
            self._limiter = anyio.CapacityLimiter(self.settings.pixelbuffer.concurrency)
        size_x, size_y = meta.level_size(request.level)
        region = request.region or Region(0, 0, size_x, size_y)
        out = np.empty((len(request.z), len(request.c), region.h, region.w),
                       dtype=meta.pixel_type.dtype)
        resolution = resolution_for(meta, request.level)
        bpp = meta.pixel_type.bytes_per_pixel
        tiles = plan_tiles(region, bpp,
                           min(self.settings.transfer.max_chunk_bytes, self.max_tile_pixels * bpp))

        async def fetch(zi: int, ci: int, tile: Tile) -> None:
            query = TileQuery(meta.id, request.z[zi], request.c[ci], request.t, tile.region,
                              resolution)
            await self._fetch_into(out[zi, ci], query, tile)

        async with task_group() as tg:
            for zi in range(len(request.z)):
                for ci in range(len(request.c)):
                    for tile in tiles:
                        tg.start_soon(fetch, zi, ci, tile)
        return out

    async def _fetch_into(self, plane: np.ndarray, query: TileQuery, tile: Tile) -> None:
        """Fetch one tile, retrying what may pass, and decode it into ``plane``."""
        assert self._limiter is not None
        ptype = self.meta.pixel_type
        expected = tile.region.pixels * ptype.bytes_per_pixel

        def work() -> None:
            # Decoding in the worker too keeps the byte swap off the event loop.
            data = self.client.fetch(query, expected)
            decode_into(plane, data, ptype, tile)

        retries = self.settings.pixelbuffer.retries
        attempt = 0
        while True:
            try:
                await anyio.to_thread.run_sync(work, limiter=self._limiter)
                return
            except RetryableFailure as exc:
                if attempt >= retries:
                    raise self._exhausted(query, str(exc), attempt + 1) from None
                delay = backoff_delay(attempt)
                log.debug("tile of image %s failed (%s); retry %d/%d in %.2fs",
                          query.image_id, exc, attempt + 1, retries, delay)
                attempt += 1
                await anyio.sleep(delay)

    def _exhausted(self, query: TileQuery, reason: str, attempts: int) -> ServerError:
        if not self._failed:
            self._failed = True
            # Later images go straight to the next transport until the service is
            # probed again, instead of each paying for the same retries.
            mark_unavailable(self.endpoint, reason)
            log.warning("pixel-buffer service at %s failed %d time(s) reading image %s "
                        "(%s); not using it until it is probed again", self.endpoint.display,
                        attempts, query.image_id, reason)
        return ServerError(
            f"The pixel-buffer service at {self.endpoint.display} failed reading image "
            f"{query.image_id} (z={query.z}, c={query.c}, t={query.t}) after {attempts} "
            f"attempt(s): {reason}.",
            hint="Retry later, or add \"ice\" after \"pixelbuffer\" in transports.read so "
                 "reads fall back to Ice.")

    async def aclose(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        self.client.close()

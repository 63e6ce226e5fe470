"""The pixel-buffer transport's hook implementation (registered as ``pixelbuffer``).

It only reads pixels: the connection (Ice) answers metadata and keeps the session.
It serves an image when ``pixelbuffer.servers`` names a URL for the connection's
server host and an ``OPTIONS`` probe of that URL finds omero-ms-pixel-buffer there
(see ``service`` for the URL forms and the probe cache); otherwise it declines and
the next transport of ``transports.read`` serves. It also declines ``bit`` images (the
service sends them back empty: ``bitSize / 8`` bytes per pixel is 0) and images the
service could not serve earlier in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.model import ImageMeta, PixelType
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.transports.pixelbuffer.settings import PixelBufferSettings

if TYPE_CHECKING:
    from cellprofiler_omero.transports.pixelbuffer.source import PixelBufferSource

log = logging.getLogger(__name__)


@runtime_checkable
class KnowsMaxPlane(Protocol):
    """A connection that can tell the server's ``omero.pixeldata.max_plane_*`` (blocking)."""

    def max_plane_size(self) -> tuple[int, int]: ...


def max_tile_pixels(connection: Connection) -> int:
    """The most pixels one tile request may ask for.

    The service's NGFF buffer refuses (with zeros) more than its configured
    ``max_plane_width × max_plane_height``. Its configuration is a copy of the
    server's, or omero-common's default where a site copied nothing: the smaller of
    the server's value and the default is safe either way.
    """
    from cellprofiler_omero.transports.pixelbuffer.service import DEFAULT_MAX_PLANE

    limit = DEFAULT_MAX_PLANE[0] * DEFAULT_MAX_PLANE[1]
    if isinstance(connection, KnowsMaxPlane):
        width, height = connection.max_plane_size()
        if width > 0 and height > 0:
            limit = min(limit, width * height)
    return limit


@hookimpl
def omero_settings_sections() -> Mapping[str, type]:
    return {"pixelbuffer": PixelBufferSettings}


@hookimpl
def omero_open_reader(connection: Connection, image: ObjectRef, meta: ImageMeta,
                      settings: Settings) -> PixelBufferSource | None:
    """A pixel-buffer source for ``image``, or ``None`` when the service cannot serve."""
    # requests and the service client load on first use (settings load this module).
    from cellprofiler_omero.transports.pixelbuffer.service import endpoint_for, probe, unserved
    from cellprofiler_omero.transports.pixelbuffer.source import PixelBufferSource

    host = connection.info.server.host
    endpoint = endpoint_for(settings.section(PixelBufferSettings), host)
    if endpoint is None:
        log.debug("no pixel-buffer URL configured for %s", host)
        return None
    if meta.pixel_type is PixelType.BIT:
        log.debug("image %s has bit pixels, which the pixel-buffer service sends empty",
                  meta.id)
        return None
    earlier = unserved(endpoint, meta.id)
    if earlier is not None:
        log.debug("the pixel-buffer service could not serve image %s before (%s)", meta.id,
                  earlier)
        return None
    found = probe(endpoint, settings.section(PixelBufferSettings))
    if not found.available:
        # Said loudly once per probe; images opened while the failure is cached would
        # otherwise repeat it for every image of a run.
        log.log(logging.DEBUG if found.cached else logging.WARNING,
                "the pixel-buffer service at %s is unavailable (%s); the next read "
                "transport will serve", endpoint.display, found.reason)
        return None
    # The key goes only to the URL configured for this connection's own server host.
    return PixelBufferSource(endpoint, connection, meta, settings, max_tile_pixels(connection))

"""The pixel-buffer transport's hook implementation (registered as ``pixelbuffer``).

It only reads pixels: the connection (Ice) answers metadata and keeps the session.
It serves an image when ``pixelbuffer.servers`` names a URL for the connection's
server host and an ``OPTIONS`` probe of that URL finds omero-ms-pixel-buffer there
(see ``service`` for the URL forms and the probe cache); otherwise it declines and
the next transport of ``transports.read`` serves.
"""

from __future__ import annotations

import logging

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.model import ImageMeta
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.transports.pixelbuffer.service import endpoint_for, probe
from cellprofiler_omero.transports.pixelbuffer.source import PixelBufferSource

log = logging.getLogger(__name__)


@hookimpl
def omero_open_reader(connection: Connection, image: ObjectRef, meta: ImageMeta,
                      settings: Settings) -> PixelBufferSource | None:
    """A pixel-buffer source for ``image``, or ``None`` when the service cannot serve."""
    host = connection.info.server.host
    endpoint = endpoint_for(settings.pixelbuffer, host)
    if endpoint is None:
        log.debug("no pixel-buffer URL configured for %s", host)
        return None
    found = probe(endpoint, settings.pixelbuffer)
    if not found.available:
        # Said loudly once per probe; images opened while the failure is cached would
        # otherwise repeat it for every image of a run.
        log.log(logging.DEBUG if found.cached else logging.WARNING,
                "the pixel-buffer service at %s is unavailable (%s); the next read "
                "transport will serve", endpoint.display, found.reason)
        return None
    # The key goes only to the URL configured for this connection's own server host.
    return PixelBufferSource(endpoint, connection.session_key, meta, settings)

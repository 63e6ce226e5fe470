"""The pixel-buffer transport's settings section, ``[pixelbuffer]`` (declared by ``plugin``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cellprofiler_omero.core.config import positive
from cellprofiler_omero.core.errors import ConfigError

if TYPE_CHECKING:
    from cellprofiler_omero.core.config import Settings


@dataclass(frozen=True)
class PixelBufferSettings:
    """The omero-ms-pixel-buffer HTTP transport."""

    #: Base URL per OMERO server host, e.g. ``{"omero.example.org" = "https://omero.example.org/tile"}``.
    servers: Mapping[str, str] = field(default_factory=dict)
    verify: bool = True
    #: A CA bundle file to verify the service's certificate with.
    ca_bundle: str = ""
    retries: int = 3
    timeout_seconds: float = 60.0
    concurrency: int = 8

    def check(self, settings: Settings) -> None:
        """Refuse values the transport cannot work with."""
        positive({"pixelbuffer.concurrency": self.concurrency})
        if self.retries < 0:
            raise ConfigError("Setting 'pixelbuffer.retries' must be 0 or more.")

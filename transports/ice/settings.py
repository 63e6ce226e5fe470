"""The Ice transport's settings section, ``[ice]`` (declared by ``plugin``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cellprofiler_omero.core.config import positive
from cellprofiler_omero.core.errors import ConfigError

if TYPE_CHECKING:
    from cellprofiler_omero.core.config import Settings


@dataclass(frozen=True)
class IceSettings:
    """The Ice transport."""

    #: Largest message the client plans for, in KiB (OMERO's default limit is 250,000 KiB).
    message_limit_kib: int = 65536
    #: RawPixelsStore handles opened per image for concurrent tiles.
    stores_per_image: int = 4
    #: Concurrent blocking Ice calls per process.
    concurrency: int = 8
    #: How long a read waits for the server to build a new big image's pyramid, in
    #: seconds (each wait as long as the server asks); 0 fails at once.
    pyramid_wait_seconds: float = 120.0

    def check(self, settings: Settings) -> None:
        """Refuse values Ice cannot work with (called whenever settings change)."""
        positive({"ice.message_limit_kib": self.message_limit_kib,
                  "ice.stores_per_image": self.stores_per_image,
                  "ice.concurrency": self.concurrency})
        # A tile and its framing must fit one message with room to spare.
        if settings.transfer.max_chunk_bytes > self.message_limit_kib * 1024 // 2:
            raise ConfigError(
                "Setting 'transfer.max_chunk_bytes' must stay under half of "
                "'ice.message_limit_kib'.",
                hint="Lower transfer.max_chunk_bytes or raise ice.message_limit_kib.")

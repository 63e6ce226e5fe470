"""A dataset at a glance, found by name: its images with their ROI counts, which of them
this package uploaded (a pipeline's label images), and the OMERO.tables attached to it.

What ``cellprofiler-omero web`` links to after a demo run. A transport answers through
an ``OverviewSource`` (``hookspecs.omero_open_overview_source``), asked in the order of
``transports.read``; commands reach it only through ``datasets_named``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import anyio.to_thread

if TYPE_CHECKING:
    from cellprofiler_omero.core.roles import Connection
    from cellprofiler_omero.core.session import SessionManager


@dataclass(frozen=True)
class ImageOverview:
    """One image of a dataset: ``roi_count`` ROIs on it; ``uploaded`` when it carries
    this package's provenance (``core.uploading.PROVENANCE_NS``)."""

    id: int
    name: str
    roi_count: int
    uploaded: bool


@dataclass(frozen=True)
class TableFile:
    """An OMERO.table attached to a dataset: its OriginalFile's id and name."""

    file_id: int
    name: str


@dataclass(frozen=True)
class DatasetOverview:
    """A dataset, its images in name order and its tables in id order."""

    id: int
    name: str
    images: tuple[ImageOverview, ...] = ()
    tables: tuple[TableFile, ...] = ()

    @property
    def images_with_rois(self) -> tuple[ImageOverview, ...]:
        """The images that carry at least one ROI."""
        return tuple(image for image in self.images if image.roi_count)

    @property
    def uploaded_images(self) -> tuple[ImageOverview, ...]:
        """The images this package uploaded (label images a pipeline saved)."""
        return tuple(image for image in self.images if image.uploaded)


@runtime_checkable
class OverviewSource(Protocol):
    """Answers ``datasets_named`` for one connection."""

    @property
    def transport(self) -> str: ...

    async def datasets_named(self, name: str) -> list[DatasetOverview]:
        """Every dataset called exactly ``name`` that the user can read, in id order,
        with its images and tables, in a few queries; ``[]`` when there is none."""

    async def aclose(self) -> None: ...


async def datasets_named(manager: SessionManager, name: str) -> list[DatasetOverview]:
    """The datasets called ``name`` (``DatasetOverview``), through the session manager
    (a lapsed session is renewed and the look-up retried: it only reads) and the first
    transport of ``transports.read`` that offers overviews (else ``NoTransport``)."""
    registry = manager.registry

    async def op(conn: Connection) -> list[DatasetOverview]:
        def blocking() -> OverviewSource:
            _, source = registry.first("read", "omero_open_overview_source",
                                       connection=conn, settings=registry.settings)
            return source

        source = await anyio.to_thread.run_sync(blocking)
        async with contextlib.aclosing(source):
            return await source.datasets_named(name)

    return await manager.call(op, what=f"finding the dataset {name!r}")


__all__ = ["DatasetOverview", "ImageOverview", "OverviewSource", "TableFile",
           "datasets_named"]

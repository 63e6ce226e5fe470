"""The roles transports play, as ``typing.Protocol``s with async methods.

A transport's factory hooks (see ``hookspecs``) return objects that follow these
protocols; the core and CellProfiler code use nothing else of a transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self, runtime_checkable

import numpy as np

from cellprofiler_omero.core.annotations import (
    ImageAnnotations,
    NewKeyValues,
    WrittenKeyValues,
)
from cellprofiler_omero.core.model import (
    Group,
    ImageMeta,
    NewImage,
    Node,
    Page,
    PixelRequest,
    TableInfo,
    UploadedImage,
)
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roi_reading import RoiFilter
from cellprofiler_omero.core.shapes import NewRoi, Roi, SavedRoi

LoginSource = Literal["password", "session", "token", "environment"]


@dataclass(frozen=True)
class ServerAddress:
    """An OMERO server's Ice endpoint."""

    host: str
    port: int = 4064

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def same_host(self, host: str | None) -> bool:
        """True when ``host`` (from a reference or token) names this server."""
        return host is None or host.lower() == self.host.lower()


@dataclass(frozen=True)
class Credentials:
    """How to log in. Secrets are excluded from ``repr`` so they never reach a log."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    session_key: str | None = field(default=None, repr=False)
    source: LoginSource = "password"

    def __post_init__(self) -> None:
        if self.session_key is None and not (self.user and self.password is not None):
            raise ValueError("Credentials need a user and password, or a session key.")


@dataclass(frozen=True)
class SessionInfo:
    """Who is connected where, and how the session was obtained (never the key)."""

    server: ServerAddress
    user: str
    user_id: int
    group: str
    group_id: int
    source: LoginSource
    is_admin: bool = False


@runtime_checkable
class Connection(Protocol):
    """A live session with one server, as a transport holds it.

    ``session_key`` is a secret: a transport sends it to ``info.server`` (and to
    services configured for that server) and nowhere else, and never logs it.
    """

    @property
    def info(self) -> SessionInfo: ...

    @property
    def session_key(self) -> str: ...

    @property
    def transport(self) -> str: ...

    async def ping(self) -> None:
        """Keep the session alive; raise ``AuthError`` when it has expired."""

    async def image_meta(self, image_id: int) -> ImageMeta:
        """Sizes, pixel type, channels, levels and plate position of one image."""

    async def image_metas(self, image_ids: Sequence[int]) -> dict[int, ImageMeta]:
        """``image_meta`` of many images by id, in a few round trips (a reader caches
        them when CellProfiler builds its image sets). Images that do not exist or that
        the user may not read are left out: ``image_meta`` says why for one of them."""

    async def images_in(self, ref: ObjectRef) -> list[ObjectRef]:
        """The images a container holds, in a stable order (an image gives itself)."""

    async def children(self, ref: ObjectRef | None, offset: int, limit: int) -> Page:
        """One page of ``ref``'s children; ``None`` lists the user's top-level containers."""

    async def groups(self) -> list[Group]:
        """The user's groups to browse, the current one first, then by name.

        The server's built-in groups (system, user, guest) are left out. A transport
        whose server has no groups to show answers ``[]``: browsers then show
        ``children(None)`` instead.
        """

    async def group_children(self, group_id: int, offset: int, limit: int) -> Page:
        """One page of what the user owns at the top of a group, in the order shown:
        Projects, Datasets in no Project, Screens, Plates in no Screen (each by name)."""

    async def thumbnails(self, image_ids: Sequence[int], size: int) -> dict[int, bytes]:
        """JPEG thumbnails by image id, longest side ``size`` pixels, of images in any of
        the user's groups; images without one (or unknown ids) are left out."""

    async def can_write(self, kind: str, object_id: int) -> bool:
        """Whether the current user may link new objects to this one."""

    async def image_annotations(self, image_ids: Sequence[int],
                                namespaces: Sequence[str] | None = None, *,
                                tags: bool = True) -> dict[int, ImageAnnotations]:
        """Key-value pairs (of MapAnnotations in ``namespaces``; ``None``: all), tags
        (when ``tags``) and plate positions of many images, by image id, in a few
        batched queries; images the user cannot read are left out."""

    async def create_user_session(self, time_to_idle_ms: int) -> str:
        """A new session key for a token (clamped to what the server allows)."""

    async def close(self, *, detach: bool) -> None:
        """End the connection; ``detach`` leaves the session alive on the server."""


@runtime_checkable
class PixelSource(Protocol):
    """Reads pixels of one image."""

    @property
    def transport(self) -> str: ...

    async def metadata(self) -> ImageMeta: ...

    async def read(self, request: PixelRequest) -> np.ndarray:
        """An array shaped ``(len(z), len(c), h, w)`` in the image's dtype."""

    async def aclose(self) -> None: ...


@runtime_checkable
class ImageSink(Protocol):
    """Creates new images on the server."""

    @property
    def transport(self) -> str: ...

    async def upload(self, pixels: np.ndarray, spec: NewImage) -> UploadedImage:
        """Create an image from ``pixels`` shaped ``(T, Z, C, Y, X)``, exactly once per key."""

    async def aclose(self) -> None: ...


@runtime_checkable
class TableSink(Protocol):
    """Appends rows to one OMERO.table."""

    @property
    def transport(self) -> str: ...

    async def row_count(self) -> int:
        """Rows the server holds now (used to make retries exactly-once)."""

    async def append(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Add one batch; every column has the same length."""

    async def existing_keys(self, key_columns: Sequence[str], range_column: str, low: int,
                            high: int) -> set[tuple[Any, ...]]:
        """Key tuples of the rows whose ``range_column`` lies in ``[low, high]``."""

    async def info(self) -> TableInfo: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class RoiTarget:
    """An image ROIs may be added to: its sizes (to check shapes against), its group, and
    the keyed ROIs it holds already (``existing``: key → ROI id)."""

    image_id: int
    size_x: int
    size_y: int
    size_z: int
    size_t: int
    group_id: int
    existing: Mapping[str, int] = field(default_factory=dict)


@runtime_checkable
class RoiSink(Protocol):
    """Saves ROIs (``core.shapes.NewRoi``) on images, exactly once per ROI key."""

    @property
    def transport(self) -> str: ...

    async def target(self, image_id: int) -> RoiTarget:
        """The image ROIs are to be saved on, with the keys of the ROIs it holds (one
        look-up per image and save); ``NotFound`` when it does not exist or the user
        cannot see it, ``PermissionDenied`` when the user may not annotate it."""

    async def save(self, rois: Sequence[NewRoi], *, check: bool = True) -> list[SavedRoi]:
        """Save one batch of ROIs, all on one image, in as few calls as the transport can
        (the caller keeps a batch under ``transfer.max_chunk_bytes``).

        Exactly once: with ``check``, a ROI whose ``key`` the server already holds on
        that image (an earlier attempt's, a rerun's, another worker's) is not made again;
        its id is returned with ``reused=True``. The caller passes ``check=False`` only
        for a batch's first attempt whose keys it has just looked up (``target``); a
        retry always checks, since the failed attempt may have saved. Ids come back in
        the order of ``rois``.
        """

    async def aclose(self) -> None: ...


@runtime_checkable
class RoiSource(Protocol):
    """Reads the ROIs of images, with their shapes."""

    @property
    def transport(self) -> str: ...

    async def rois(self, image_id: int, selection: RoiFilter) -> list[Roi]:
        """Every ROI on ``image_id`` that ``selection`` keeps (its other shapes left
        out), in ROI id order, however many there are (the transport pages); ``[]``
        for an image without ROIs, ``NotFound`` for an image the user cannot read.
        Shapes of kinds ``core.shapes`` does not model (lines, labels…) are left out."""

    async def aclose(self) -> None: ...


@runtime_checkable
class AnnotationSink(Protocol):
    """Writes key-value pair annotations (MapAnnotations) on images."""

    @property
    def transport(self) -> str: ...

    async def put_key_values(self, request: NewKeyValues) -> WrittenKeyValues:
        """Link one MapAnnotation to ``request.image_id``, exactly once per
        ``request.identity``: an earlier attempt's annotation is found and returned
        (``reused``). Raises ``CannotAnnotate`` before writing anything when the user may
        not annotate the image, ``NotFound`` when it cannot be read."""

    async def aclose(self) -> None: ...


class AsyncClosing:
    """``async with source:`` closes it on the way out (``aclose``), as files do.

    Sources and sinks of the built-in transports derive from it; a third-party one may
    too, or simply define ``aclose`` (the core closes with ``contextlib.aclosing``).
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the object holds; safe to call more than once."""


__all__ = [
    "AnnotationSink",
    "AsyncClosing",
    "Connection",
    "Credentials",
    "ImageSink",
    "LoginSource",
    "Node",
    "PixelSource",
    "RoiSink",
    "RoiSource",
    "RoiTarget",
    "ServerAddress",
    "SessionInfo",
    "TableSink",
]

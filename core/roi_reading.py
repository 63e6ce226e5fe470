"""Reading an image's ROIs: which ones (``RoiFilter``) and the one call that fetches them.

A transport's ``RoiSource`` (``roles``) pages through the ROIs and decodes them into
``core.shapes.Roi``; the filter is applied as they arrive, so a transport may also
use it to ask its server for less.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.shapes import Roi, ShapeKind

if TYPE_CHECKING:
    from cellprofiler_omero.core.roles import Connection
    from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)

_GLOB = set("*?[")


@dataclass(frozen=True)
class RoiFilter:
    """Which ROIs and shapes to read.

    ``kinds``: shape kinds to keep (``None``: all); a ROI left with no shape is left
    out. ``text``: keep ROIs whose name or any shape's text matches — a glob when it
    holds ``*``, ``?`` or ``[`` (``"nucleus*"``), otherwise a substring; case is
    ignored; blank keeps all. ``namespaces``: keep ROIs with an annotation in one of
    these namespaces (OMERO 5's ROIs have no namespace field of their own; tools mark
    them with annotations); empty keeps all.
    """

    kinds: frozenset[ShapeKind] | None = None
    text: str = ""
    namespaces: tuple[str, ...] = ()

    def text_matches(self, roi: Roi) -> bool:
        """Whether ``roi``'s name or one of its shapes' text matches ``text``."""
        pattern = self.text.strip().casefold()
        if not pattern:
            return True
        candidates = [roi.name or ""] + [s.style.text or "" for s in roi.shapes]
        if _GLOB & set(pattern):
            return any(fnmatch.fnmatchcase(c.casefold(), pattern) for c in candidates)
        return any(pattern in c.casefold() for c in candidates)

    def apply(self, roi: Roi) -> Roi | None:
        """``roi`` with only the wanted shapes, or ``None`` when it is not wanted."""
        if self.namespaces and not set(self.namespaces) & set(roi.namespaces):
            return None
        if not self.text_matches(roi):
            return None
        if self.kinds is None:
            return roi
        keep = [i for i, s in enumerate(roi.shapes) if s.kind in self.kinds]
        if not keep:
            return None
        if len(keep) == len(roi.shapes):
            return roi
        ids = tuple(roi.shape_ids[i] for i in keep) if roi.shape_ids else ()
        return replace(roi, shapes=tuple(roi.shapes[i] for i in keep), shape_ids=ids)


async def read_rois(manager: SessionManager, image_id: int,
                    selection: RoiFilter = RoiFilter(), *, host: str | None = None
                    ) -> list[Roi]:
    """The ROIs on image ``image_id`` that ``selection`` keeps, in ROI id order.

    Through the session manager (a lapsed session is renewed and the read retried:
    reading is safe to repeat) and the first read transport that offers ROIs. An image
    without ROIs gives ``[]``; one that does not exist or cannot be read, ``NotFound``.
    """
    ref = ObjectRef(Kind.IMAGE, image_id, host)

    async def op(conn: Connection) -> list[Roi]:
        source = await manager.registry.open_roi_reader(conn)
        async with contextlib.aclosing(source):
            return await source.rois(image_id, selection)

    rois = await manager.call(op, ref, what=f"reading the ROIs of image {image_id}")
    log.info("read %d ROIs of image %s", len(rois), image_id)
    return rois

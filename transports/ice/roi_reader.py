"""ROIs over Ice: every ROI of an image with its shapes, paged, decoded into ``core.shapes``.

Two HQL queries per page instead of ``IRoi.findByImage`` (which omero-blitz marks
deprecated in its newer slice files): the ROI ids of the image in id order, paged
with ``offset``/``limit`` (``ROI_IDS_PAGE`` ids a query), then each ``FETCH_PAGE`` of
those ROIs with their shapes (``left outer join fetch r.shapes``). Paging ids, not the
fetch, keeps Hibernate from applying ``limit`` to a collection fetch in memory, and
keeps each reply far below the Ice message limit however many ROIs an image has.
Fetches run concurrently, bounded by the connection's limiter (``ice.concurrency``).
Namespaces (annotations linked to a ROI) are read only when the filter asks for them.

Shapes with an affine ``transform`` are mapped into image coordinates here, exactly:
Polygons, Rectangles (as four-corner Polygons) and Points always; Ellipses when the
transform keeps their axes horizontal and vertical (otherwise as a Polygon whose
vertices lie on the true outline at most a quarter of a pixel apart); Masks when it
is a translation by whole pixels. A Mask under any other transform is left out with a
warning: it has no exact pixels to give.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import numpy as np
from omero.rtypes import unwrap

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import NotFound, UnsupportedData
from cellprofiler_omero.core.roi_encoding import unpack_mask
from cellprofiler_omero.core.roi_reading import RoiFilter
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.core.shapes import (
    EllipseShape,
    MaskShape,
    Plane,
    PointShape,
    PolygonShape,
    RectangleShape,
    Roi,
    Shape,
    ShapeStyle,
)
from cellprofiler_omero.core.tasks import task_group
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params

log = logging.getLogger(__name__)

#: ROI ids per id query (longs only: a small reply).
ROI_IDS_PAGE = 5000
#: ROIs per fetch with their shapes: even with 1 MiB masks, a reply stays a fraction of
#: the default 250 MB Ice message limit.
FETCH_PAGE = 200

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

Affine = tuple[float, float, float, float, float, float]  # a00, a10, a01, a11, a02, a12


def parse_points(text: str | None) -> tuple[tuple[float, float], ...]:
    """(x, y) pairs of an OMERO ``points`` string: ``"x,y x,y …"`` (OMERO 5), or the
    legacy ``"points[x,y, x,y] points1[…] …"`` (its first list)."""
    if not text:
        return ()
    legacy = re.search(r"points\[([^\]]*)\]", text)
    numbers = [float(n) for n in _NUMBER.findall(legacy.group(1) if legacy else text)]
    return tuple(zip(numbers[0::2], numbers[1::2], strict=False))


def _affine(shape: Any) -> Affine | None:
    transform = getattr(shape, "_transform", None)
    if transform is None or not getattr(transform, "_loaded", True):
        return None
    values = tuple(float(unwrap(getattr(transform, f"_{name}")) or 0.0)
                   for name in ("a00", "a10", "a01", "a11", "a02", "a12"))
    if values == (1.0, 0.0, 0.0, 1.0, 0.0, 0.0):
        return None
    return values  # type: ignore[return-value]


def _map(m: Affine, x: float, y: float) -> tuple[float, float]:
    return m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]


def _ellipse_outline(cx: float, cy: float, rx: float, ry: float, m: Affine
                     ) -> tuple[tuple[float, float], ...]:
    """Vertices on the transformed ellipse's outline, at most 0.25 pixel apart."""
    scale = max(math.hypot(m[0], m[1]), math.hypot(m[2], m[3]), 1e-9)
    steps = max(16, math.ceil(2 * math.pi * max(abs(rx), abs(ry)) * scale / 0.25))
    angles = np.linspace(0.0, 2 * math.pi, steps, endpoint=False)
    return tuple(_map(m, cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles)


def _double(shape: Any, name: str) -> float:
    value = unwrap(getattr(shape, f"_{name}", None))
    return float(value) if value is not None else 0.0


def decode_shape(shape: Any, roi_id: int) -> Shape | None:
    """A ``core.shapes`` shape of an omero-py shape; ``None`` for kinds not modelled
    (Line, Polyline, Label) and for Masks under a transform that is not a whole-pixel
    translation."""
    import omero.model

    def opt(name: str) -> int | None:
        value = unwrap(getattr(shape, f"_{name}", None))
        return None if value is None else int(value)

    plane = Plane(opt("theZ"), opt("theT"), opt("theC"))
    style = ShapeStyle(opt("strokeColor"), opt("fillColor"),
                       unwrap(getattr(shape, "_textValue", None)))
    m = _affine(shape)
    if isinstance(shape, omero.model.MaskI):
        width, height = int(_double(shape, "width")), int(_double(shape, "height"))
        data = shape.getBytes() or b""
        try:
            bits = unpack_mask(data, width, height)
        except UnsupportedData as exc:
            raise UnsupportedData(
                f"Mask {unwrap(shape.getId())} of ROI {roi_id} is damaged: {exc.message}",
                hint="Ask its owner to draw it again; other ROIs can be read without it "
                     "by leaving Masks out.") from None
        x, y = _double(shape, "x"), _double(shape, "y")
        if m is not None:
            if m[:4] != (1.0, 0.0, 0.0, 1.0) or m[4] != round(m[4]) or m[5] != round(m[5]):
                log.warning("Mask %s of ROI %s has a transform other than a whole-pixel "
                            "translation; it is left out.", unwrap(shape.getId()), roi_id)
                return None
            x, y = x + m[4], y + m[5]
        # A mask bit covers [x + u, x + u + 1): its pixel is the one whose centre lies
        # inside, ceil(x + u - 0.5) (x itself for the whole-pixel masks tools write).
        return MaskShape(math.ceil(x - 0.5), math.ceil(y - 0.5), bits, plane, style)
    if isinstance(shape, omero.model.PolygonI):
        points = parse_points(unwrap(shape.getPoints()))
        if m is not None:
            points = tuple(_map(m, px, py) for px, py in points)
        return PolygonShape(points, plane, style)
    if isinstance(shape, omero.model.RectangleI):
        x, y = _double(shape, "x"), _double(shape, "y")
        w, h = _double(shape, "width"), _double(shape, "height")
        if m is None:
            return RectangleShape(x, y, w, h, plane, style)
        corners = ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        return PolygonShape(tuple(_map(m, px, py) for px, py in corners), plane, style)
    if isinstance(shape, omero.model.EllipseI):
        cx, cy = _double(shape, "x"), _double(shape, "y")
        rx, ry = _double(shape, "radiusX"), _double(shape, "radiusY")
        if m is None:
            return EllipseShape(cx, cy, rx, ry, plane, style)
        if m[1] == 0.0 and m[2] == 0.0:  # axes stay horizontal and vertical
            nx, ny = _map(m, cx, cy)
            return EllipseShape(nx, ny, rx * abs(m[0]), ry * abs(m[3]), plane, style)
        return PolygonShape(_ellipse_outline(cx, cy, rx, ry, m), plane, style)
    if isinstance(shape, omero.model.PointI):
        x, y = _double(shape, "x"), _double(shape, "y")
        if m is not None:
            x, y = _map(m, x, y)
        return PointShape(x, y, plane, style)
    return None


def decode_roi(roi: Any, image_id: int, namespaces: tuple[str, ...] = ()) -> Roi:
    """A ``core.shapes.Roi`` of an omero-py Roi with its shapes loaded."""
    roi_id = int(unwrap(roi.getId()))
    shapes: list[Shape] = []
    shape_ids: list[int] = []
    for omero_shape in sorted(roi.copyShapes() if roi.isShapesLoaded() else [],
                              key=lambda s: int(unwrap(s.getId()))):
        decoded = decode_shape(omero_shape, roi_id)
        if decoded is not None:
            shapes.append(decoded)
            shape_ids.append(int(unwrap(omero_shape.getId())))
    return Roi(id=roi_id, image_id=image_id, name=unwrap(roi.getName()),
               description=unwrap(roi.getDescription()), namespaces=namespaces,
               shapes=tuple(shapes), shape_ids=tuple(shape_ids))


class IceRoiSource(AsyncClosing):
    """The Ice transport's ``RoiSource``."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    def _ids(self, image_id: int) -> list[int]:
        """Every ROI id of the image, in order (blocking; ``ROI_IDS_PAGE`` per query)."""
        query = self.conn.sf.getQueryService()
        exists = query.projection("select i.id from Image i where i.id = :id",
                                  params(id=image_id), ALL_GROUPS)
        if not exists:
            info = self.conn.info
            raise NotFound(
                f"Image {image_id} does not exist on {info.server.host}, or {info.user} "
                "may not read it.", hint="Check the id, and that the image's group is one "
                                         "of yours.")
        ids: list[int] = []
        while True:
            p = params(id=image_id)
            p.page(len(ids), ROI_IDS_PAGE)
            rows = query.projection(
                "select r.id from Roi r where r.image.id = :id order by r.id", p, ALL_GROUPS)
            ids.extend(int(unwrap(row[0])) for row in rows)
            if len(rows) < ROI_IDS_PAGE:
                return ids

    def _fetch(self, image_id: int, ids: list[int], with_namespaces: bool) -> list[Roi]:
        """One page of ROIs with their shapes (and namespaces when asked), blocking."""
        query = self.conn.sf.getQueryService()
        rois = query.findAllByQuery(
            "select distinct r from Roi r left outer join fetch r.shapes s "
            "where r.id in (:ids) order by r.id", params(ids=ids), ALL_GROUPS)
        namespaces: dict[int, set[str]] = {}
        if with_namespaces:
            for roi_id, ns in query.projection(
                    "select l.parent.id, a.ns from RoiAnnotationLink l join l.child a "
                    "where l.parent.id in (:ids) and a.ns is not null",
                    params(ids=ids), ALL_GROUPS):
                namespaces.setdefault(int(unwrap(roi_id)), set()).add(str(unwrap(ns)))
        out = []
        for roi in rois:
            roi_id = int(unwrap(roi.getId()))
            out.append(decode_roi(roi, image_id, tuple(sorted(namespaces.get(roi_id, ())))))
        return sorted(out, key=lambda r: r.id)

    async def rois(self, image_id: int, selection: RoiFilter) -> list[Roi]:
        ids = await self.conn.call(self._ids, image_id,
                                   what=f"listing the ROIs of image {image_id}")
        pages = [ids[i:i + FETCH_PAGE] for i in range(0, len(ids), FETCH_PAGE)]
        results: list[list[Roi]] = [[] for _ in pages]
        with_ns = bool(selection.namespaces)

        async def fetch(index: int, page: list[int]) -> None:
            results[index] = await self.conn.call(
                self._fetch, image_id, page, with_ns,
                what=f"reading {len(page)} ROIs of image {image_id}")

        async with task_group() as tg:
            for index, page in enumerate(pages):
                tg.start_soon(fetch, index, page)
        kept = (selection.apply(roi) for page in results for roi in page)
        return [roi for roi in kept if roi is not None]

    async def aclose(self) -> None:
        """Nothing to release: the queries use the connection's stateless service."""

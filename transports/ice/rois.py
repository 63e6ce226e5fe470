"""Saving ROIs over Ice: many ROIs per ``IUpdate`` call, exactly once per key.

A keyed ROI carries its key in its description (``[cellprofiler-omero roi <key>]``,
after any description of its own). ``target`` reads the image (its permissions and
sizes) and, in one query, the ids and descriptions of the ROIs it holds: the keys
found there are not sent again. ``save`` sends a batch in one
``IUpdate.saveAndReturnIds`` call (the ids of the roots, in order: the shapes' bytes
are not sent back as ``saveAndReturnArray`` would); with ``check`` (every retry) it
first asks which of the batch's keys the image holds now (the image's ROIs with the
batch's names) and sends only the others. So a batch retried after its reply was
lost, a rerun, or another worker saving the same objects finds the ROIs already made.

Model classes and fields are OMERO's (ome/omero-model ``Roi``, ``Mask``, ``Polygon``,
``Rectangle``, ``Ellipse``, ``Point``): a Mask's ``bytes`` are the bit-packed box,
coordinates are doubles, ``theZ``/``theT``/``theC`` ints, colours signed RGBA ints. A
ROI needs the ANNOTATE right on its image (omero-server ``OmeroInterceptor``), which
``target`` checks first (``canAnnotate``) so nothing is sent to an image that would
refuse it.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from typing import Any

import omero
import omero.model
import omero.sys
from omero.rtypes import rdouble, rint, rlist, rlong, rstring, unwrap

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import CannotAnnotate, NotFound, UnsupportedData
from cellprofiler_omero.core.roi_encoding import pack_mask
from cellprofiler_omero.core.roles import AsyncClosing, RoiTarget
from cellprofiler_omero.core.shapes import (
    EllipseShape,
    MaskShape,
    NewRoi,
    PointShape,
    PolygonShape,
    RectangleShape,
    SavedRoi,
    Shape,
)
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params

_MARKER = re.compile(r"\[cellprofiler-omero roi ([0-9A-Za-z_.:-]+)\]")
#: The group of each image ROIs went to, per connection (asked once per image).
_GROUPS: weakref.WeakKeyDictionary[IceConnection, dict[int, int]] = \
    weakref.WeakKeyDictionary()


def marker(key: str) -> str:
    """The description marker that holds a ROI's exactly-once key."""
    return f"[cellprofiler-omero roi {key}]"


def description_of(roi: NewRoi) -> str:
    """What the ROI's description is on the server: its own text, then its key's marker."""
    if roi.key is None:
        return roi.description
    return f"{roi.description}\n{marker(roi.key)}".strip()


def _points(points: Sequence[tuple[float, float]]) -> str:
    # OMERO's point list: "x1,y1 x2,y2 …" (what OMERO.web and omero-rois parse).
    return " ".join(f"{x:g},{y:g}" for x, y in points)


def shape_model(shape: Shape) -> Any:
    """The ``omero.model`` shape for one of the core's shapes."""
    model: Any
    if isinstance(shape, MaskShape):
        model = omero.model.MaskI()
        model.setX(rdouble(shape.x))
        model.setY(rdouble(shape.y))
        model.setWidth(rdouble(shape.width))
        model.setHeight(rdouble(shape.height))
        model.setBytes(pack_mask(shape.mask))
    elif isinstance(shape, PolygonShape):
        model = omero.model.PolygonI()
        model.setPoints(rstring(_points(shape.points)))
    elif isinstance(shape, RectangleShape):
        model = omero.model.RectangleI()
        model.setX(rdouble(shape.x))
        model.setY(rdouble(shape.y))
        model.setWidth(rdouble(shape.width))
        model.setHeight(rdouble(shape.height))
    elif isinstance(shape, EllipseShape):
        model = omero.model.EllipseI()
        model.setX(rdouble(shape.x))
        model.setY(rdouble(shape.y))
        model.setRadiusX(rdouble(shape.radius_x))
        model.setRadiusY(rdouble(shape.radius_y))
    elif isinstance(shape, PointShape):
        model = omero.model.PointI()
        model.setX(rdouble(shape.x))
        model.setY(rdouble(shape.y))
    else:
        raise UnsupportedData(f"The Ice transport cannot save a {type(shape).__name__}.")
    for setter, value in (("setTheZ", shape.plane.z), ("setTheT", shape.plane.t),
                          ("setTheC", shape.plane.c),
                          ("setStrokeColor", shape.style.stroke_color),
                          ("setFillColor", shape.style.fill_color)):
        if value is not None:
            getattr(model, setter)(rint(value))
    if shape.style.text is not None:
        model.setTextValue(rstring(shape.style.text))
    return model


def roi_model(roi: NewRoi) -> Any:
    """The ``omero.model.RoiI`` (with its shapes) for a ``NewRoi``."""
    model = omero.model.RoiI()
    model.setImage(omero.model.ImageI(rlong(roi.image_id), False))
    model.setName(rstring(roi.name))
    description = description_of(roi)
    if description:
        model.setDescription(rstring(description))
    if roi.namespace:
        model.setNamespaces([roi.namespace])
    for shape in roi.shapes:
        model.addShape(shape_model(shape))
    return model


class IceRoiSink(AsyncClosing):
    """The Ice transport's ``RoiSink``."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    async def aclose(self) -> None:
        return None

    # -- the target image ---------------------------------------------------------------------

    async def target(self, image_id: int) -> RoiTarget:
        return await self.conn.call(self._target, image_id,
                                    what=f"checking image {image_id} for ROIs")

    def _target(self, image_id: int) -> RoiTarget:
        query = self.conn.sf.getQueryService()
        image = query.findByQuery("select i from Image i where i.id = :id",
                                  params(id=image_id), ALL_GROUPS)
        user = self.conn.info.user
        if image is None:
            raise NotFound(
                f"Image {image_id} does not exist on {self.conn.info.server.host}, or "
                f"{user} may not read it: no ROIs can be saved on it.",
                hint="Check that the objects come from an OMERO image you can see.")
        if not image.details.permissions.canAnnotate():
            raise CannotAnnotate(
                f"{user} may not add ROIs to image {image_id} (its group or owner does not "
                "allow others to annotate it); nothing was saved.",
                kind="Image", object_id=image_id, user=user,
                hint="Save ROIs on images you own or in a read-annotate or read-write "
                     "group, or ask the image's owner to run the pipeline.")
        rows = query.projection(
            "select p.sizeX, p.sizeY, p.sizeZ, p.sizeT, i.details.group.id from Pixels p "
            "join p.image i where i.id = :id", params(id=image_id), ALL_GROUPS)
        if not rows:
            raise NotFound(f"Image {image_id} has no pixels on the server: no ROIs can be "
                           "saved on it.")
        size_x, size_y, size_z, size_t, group_id = (int(unwrap(v)) for v in rows[0])
        _GROUPS.setdefault(self.conn, {})[image_id] = group_id
        # Every ROI of the image (not a LIKE on the marker: the image's ROIs are found by
        # their image, and reading the descriptions is cheaper than matching them).
        found: dict[str, int] = {}
        for row in query.projection("select r.id, r.description from Roi r "
                                    "where r.image.id = :id order by r.id",
                                    params(id=image_id), ALL_GROUPS):
            for key in _MARKER.findall(unwrap(row[1]) or ""):
                found.setdefault(key, int(unwrap(row[0])))  # the first made, if two exist
        return RoiTarget(image_id, size_x, size_y, size_z, size_t, group_id, found)

    def _group(self, image_id: int) -> int:
        known = _GROUPS.get(self.conn, {}).get(image_id)
        if known is not None:
            return known
        rows = self.conn.sf.getQueryService().projection(
            "select i.details.group.id from Image i where i.id = :id", params(id=image_id),
            ALL_GROUPS)
        if not rows:
            raise NotFound(f"Image {image_id} does not exist on {self.conn.info.server.host}"
                           f", or {self.conn.info.user} may not read it.")
        group_id = int(unwrap(rows[0][0]))
        _GROUPS.setdefault(self.conn, {})[image_id] = group_id
        return group_id

    # -- saving ---------------------------------------------------------------------------------

    async def save(self, rois: Sequence[NewRoi], *, check: bool = True) -> list[SavedRoi]:
        if not rois:
            return []
        image_id = rois[0].image_id
        if any(roi.image_id != image_id for roi in rois):
            raise ValueError("A batch of ROIs lies on one image; split it by image first.")
        return await self.conn.call(self._save, list(rois), image_id, check,
                                    what=f"saving {len(rois)} ROIs on image {image_id}")

    def _existing(self, rois: list[NewRoi], image_id: int) -> dict[str, int]:
        """Key → id of the batch's keyed ROIs the image already holds (one query)."""
        wanted = {roi.key for roi in rois if roi.key is not None}
        if not wanted:
            return {}
        p = omero.sys.ParametersI()
        p.addLong("iid", image_id)
        p.add("names", rlist([rstring(n) for n in sorted({roi.name for roi in rois
                                                          if roi.key is not None})]))
        rows = self.conn.sf.getQueryService().projection(
            "select r.id, r.description from Roi r where r.image.id = :iid "
            "and r.name in (:names) order by r.id", p, ALL_GROUPS)
        found: dict[str, int] = {}
        for row in rows:
            roi_id, description = int(unwrap(row[0])), unwrap(row[1]) or ""
            for key in _MARKER.findall(description):
                if key in wanted:
                    found.setdefault(key, roi_id)  # the first made, should two exist
        return found

    def _save(self, rois: list[NewRoi], image_id: int, check: bool) -> list[SavedRoi]:
        ctx = {"omero.group": str(self._group(image_id))}
        existing = self._existing(rois, image_id) if check else {}
        # One ROI per key, also within the batch.
        send: list[NewRoi] = []
        queued: set[str] = set()
        for roi in rois:
            if roi.key is None:
                send.append(roi)
            elif roi.key not in existing and roi.key not in queued:
                queued.add(roi.key)
                send.append(roi)
        made: dict[int, int] = {}
        if send:
            ids = self.conn.sf.getUpdateService().saveAndReturnIds(
                [roi_model(roi) for roi in send], ctx)
            if len(ids) != len(send):
                raise UnsupportedData(
                    f"The server returned {len(ids)} ids for {len(send)} new ROIs.")
            made = {id(roi): int(i) for roi, i in zip(send, ids, strict=True)}
        made_by_key = {roi.key: made[id(roi)] for roi in send if roi.key is not None}
        out = []
        for roi in rois:
            if id(roi) in made:
                out.append(SavedRoi(made[id(roi)], image_id, roi.key, reused=False))
            elif roi.key is not None and roi.key in existing:
                out.append(SavedRoi(existing[roi.key], image_id, roi.key, reused=True))
            else:  # the same key twice in one batch: the first one made stands for both
                assert roi.key is not None
                out.append(SavedRoi(made_by_key[roi.key], image_id, roi.key, reused=True))
        return out

"""Key-value pairs and tags of many images (batched HQL), and measurement annotations.

Reading: the annotations of a whole image list come in a few queries, not one per
image: ids go in chunks of ``ID_CHUNK`` per ``in (:ids)`` list, and every query that
may return many rows is paged (``ROW_PAGE`` rows, ordered by unique ids so pages
never overlap). Map annotations are fetched as objects (``select a from
MapAnnotation a``), whose ``mapValue`` list comes with them in its own order.

Writing (``IceAnnotationSink``): one MapAnnotation per image and identity. The
identity is the annotation's description; before creating, the sink looks for this
user's annotation with that namespace and description on the image. The image's
permissions are checked first (``canAnnotate``), so an image the user may not annotate
gets a ``CannotAnnotate`` and nothing is written; the annotation and its link are then
saved in one ``saveAndReturnObject`` call (one transaction on a real server).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import omero
import omero.model
from omero.rtypes import rstring, unwrap

from cellprofiler_omero.core.annotations import (
    ImageAnnotations,
    KeyValue,
    NewKeyValues,
    WrittenKeyValues,
)
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import CannotAnnotate, NotFound
from cellprofiler_omero.core.model import PlatePosition
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params

#: Image (or annotation) ids per ``in (:ids)`` list.
ID_CHUNK = 500
#: Rows per page of a query that can return many rows.
ROW_PAGE = 2000


def _chunks(ids: Sequence[int], size: int = ID_CHUNK) -> list[list[int]]:
    unique = list(dict.fromkeys(int(i) for i in ids))
    return [unique[i:i + size] for i in range(0, len(unique), size)]


def _paged(query: Any, hql: str, ids: list[int], extra: dict[str, Any] | None = None
           ) -> list[list[Any]]:
    """Every row of a projection over ``:ids``, ``ROW_PAGE`` rows per call."""
    rows: list[list[Any]] = []
    offset = 0
    while True:
        p = params(ids=ids)
        for key, values in (extra or {}).items():
            p.add(key, omero.rtypes.rlist([rstring(v) for v in values]))
        p.page(offset, ROW_PAGE)
        page = query.projection(hql, p, ALL_GROUPS)
        rows.extend([unwrap(v) for v in row] for row in page)
        if len(page) < ROW_PAGE:
            return rows
        offset += ROW_PAGE


_MAP_LINKS = ("select l.parent.id, a.id from ImageAnnotationLink l join l.child a "
              "where l.parent.id in (:ids) and a.class = MapAnnotation{ns} "
              "order by l.parent.id, a.id")
_TAG_LINKS = ("select l.parent.id, a.id, a.textValue from ImageAnnotationLink l "
              "join l.child a where l.parent.id in (:ids) and a.class = TagAnnotation "
              "order by l.parent.id, a.id")
_PLATES = ("select ws.image.id, index(ws), w.id, w.row, w.column, p.id, p.name, ws.id "
           "from Well w join w.wellSamples ws join w.plate p where ws.image.id in (:ids) "
           "order by ws.id")


def image_annotations(conn: IceConnection, image_ids: Sequence[int],
                      namespaces: Sequence[str] | None, tags: bool
                      ) -> dict[int, ImageAnnotations]:
    """``Connection.image_annotations`` (blocking; see the module docstring)."""
    query = conn.sf.getQueryService()
    pairs: dict[int, list[KeyValue]] = {}
    tag_names: dict[int, list[str]] = {}
    plates: dict[int, PlatePosition] = {}
    ns_filter = " and a.ns in (:ns)" if namespaces else ""
    extra = {"ns": list(namespaces)} if namespaces else None
    for chunk in _chunks(image_ids):
        links = _paged(query, _MAP_LINKS.format(ns=ns_filter), chunk, extra)
        by_annotation: dict[int, list[int]] = {}
        for image_id, ann_id in links:
            by_annotation.setdefault(int(ann_id), []).append(int(image_id))
        for ann_chunk in _chunks(list(by_annotation)):
            found = query.findAllByQuery("select a from MapAnnotation a where a.id in (:ids)",
                                         params(ids=ann_chunk), ALL_GROUPS)
            for ann in sorted(found, key=lambda a: int(unwrap(a.getId()))):
                ann_id = int(unwrap(ann.getId()))
                ns = unwrap(ann.getNs())
                values = [KeyValue(str(nv.name), str(nv.value or ""), ns, ann_id)
                          for nv in (ann.getMapValue() or []) if nv.name]
                for image_id in by_annotation.get(ann_id, []):
                    pairs.setdefault(image_id, []).extend(values)
        if tags:
            for image_id, _ann_id, text in _paged(query, _TAG_LINKS, chunk):
                tag_names.setdefault(int(image_id), []).append(str(text or ""))
        for row in _paged(query, _PLATES, chunk):
            image_id, field, well_id, r, c, plate_id, plate_name, _ws = row
            plates.setdefault(int(image_id), PlatePosition(
                plate_id=int(plate_id), plate_name=plate_name or "", well_id=int(well_id),
                row=None if r is None else int(r), column=None if c is None else int(c),
                field=int(field) if field is not None else 0))
    readable = _readable(conn, image_ids)
    return {i: ImageAnnotations(i, tuple(pairs.get(i, ())), tuple(tag_names.get(i, ())),
                                plates.get(i)) for i in readable}


def _readable(conn: IceConnection, image_ids: Sequence[int]) -> list[int]:
    """The ids of ``image_ids`` the user can read, in the order given."""
    query = conn.sf.getQueryService()
    found: set[int] = set()
    for chunk in _chunks(image_ids):
        rows = query.projection("select i.id from Image i where i.id in (:ids)",
                                params(ids=chunk), ALL_GROUPS)
        found.update(int(unwrap(r[0])) for r in rows)
    return [i for i in dict.fromkeys(int(i) for i in image_ids) if i in found]


class IceAnnotationSink(AsyncClosing):
    """The Ice transport's ``AnnotationSink`` (see the module docstring)."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    async def put_key_values(self, request: NewKeyValues) -> WrittenKeyValues:
        return await self.conn.call(self._put, request,
                                    what=f"annotating image {request.image_id}")

    def _put(self, request: NewKeyValues) -> WrittenKeyValues:
        sf = self.conn.sf
        query = sf.getQueryService()
        info = self.conn.info
        image = query.findByQuery("select i from Image i where i.id = :id",
                                  params(id=request.image_id), ALL_GROUPS)
        if image is None:
            raise NotFound(
                f"Image {request.image_id} does not exist on {info.server.host}, or "
                f"{info.user} may not read it.",
                hint="Check that the image set's images come from this server.")
        existing = self._existing(request)
        if existing is not None:
            return WrittenKeyValues(request.image_id, existing, reused=True)
        if not image.details.permissions.canAnnotate():
            raise CannotAnnotate(
                f"{info.user} may not annotate image {request.image_id} (it belongs to "
                f"another user in a group whose permissions do not allow it); no "
                f"annotation was written.", kind="Image", object_id=request.image_id,
                user=info.user,
                hint="Run on images you own or in a read-annotate group, or leave "
                     "ExportToOMEROKeyValues out of the pipeline.")
        group = str(unwrap(image.details.group.getId()))
        ann = omero.model.MapAnnotationI()
        ann.setNs(rstring(request.namespace))
        ann.setDescription(rstring(request.identity))
        ann.setMapValue([omero.model.NamedValue(k, v) for k, v in request.pairs])
        link = omero.model.ImageAnnotationLinkI()
        link.setParent(omero.model.ImageI(request.image_id, False))
        link.setChild(ann)
        # One call: on a real server the annotation and its link commit together.
        saved = sf.getUpdateService().saveAndReturnObject(link, {"omero.group": group})
        ann_id = int(unwrap(saved.getChild().getId()))
        # Two writers of one image set (a duplicated analysis task) may both have made
        # one: the lowest id is kept, the other removed, as tables of a run are.
        first = self._existing(request)
        if first is not None and first != ann_id:
            self.conn.delete({"Annotation": [ann_id]}, {"omero.group": group})
            return WrittenKeyValues(request.image_id, first, reused=True)
        return WrittenKeyValues(request.image_id, ann_id, reused=False)

    def _existing(self, request: NewKeyValues) -> int | None:
        p = params(id=request.image_id, uid=self.conn.info.user_id)
        p.add("ns", rstring(request.namespace))
        p.add("desc", rstring(request.identity))
        rows = self.conn.sf.getQueryService().projection(
            "select a.id from ImageAnnotationLink l join l.child a where l.parent.id = :id "
            "and a.ns = :ns and a.description = :desc and a.details.owner.id = :uid "
            "order by a.id", p, ALL_GROUPS)
        return int(unwrap(rows[0][0])) if rows else None

    async def aclose(self) -> None:
        return None

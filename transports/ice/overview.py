"""Datasets by name over Ice (``core.overview``): five HQL projections, whatever the size.

The datasets called the name; their image links with the images' names; the ROI count
of each image (``group by``); which images carry this package's provenance annotation;
and the datasets' FileAnnotations whose file is an OMERO.table. All in every group the
user can read (``omero.group: -1``), as the session's other look-ups.
"""

from __future__ import annotations

from typing import Any

import omero
from omero.rtypes import rstring, unwrap

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.overview import DatasetOverview, ImageOverview, TableFile
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.core.uploading import PROVENANCE_NS
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params

#: The mimetype OMERO.tables gives the OriginalFile of a table.
TABLES_MIMETYPE = "OMERO.tables"


def _with_text(p: omero.sys.ParametersI, **values: str) -> omero.sys.ParametersI:
    for key, value in values.items():
        p.add(key, rstring(value))
    return p


class IceOverviewSource(AsyncClosing):
    """The Ice transport's ``OverviewSource``."""

    transport = "ice"

    def __init__(self, conn: IceConnection, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings

    def _overviews(self, name: str) -> list[DatasetOverview]:
        """Blocking: every dataset called ``name`` with its images and tables."""
        query = self.conn.sf.getQueryService()

        def rows(hql: str, p: Any) -> list[list[Any]]:
            return [[unwrap(v) for v in row] for row in query.projection(hql, p, ALL_GROUPS)]

        datasets = rows("select d.id, d.name from Dataset d where d.name = :name "
                        "order by d.id", _with_text(omero.sys.ParametersI(), name=name))
        if not datasets:
            return []
        ids = [int(row[0]) for row in datasets]
        links = rows("select l.parent.id, l.child.id, l.child.name from DatasetImageLink l "
                     "where l.parent.id in (:ids) order by l.child.name, l.child.id",
                     params(ids=ids))
        image_ids = sorted({int(row[1]) for row in links})
        counts: dict[int, int] = {}
        uploaded: set[int] = set()
        if image_ids:
            counts = {int(image): int(count) for image, count in rows(
                "select r.image.id, count(r.id) from Roi r where r.image.id in (:ids) "
                "group by r.image.id", params(ids=image_ids))}
            uploaded = {int(row[0]) for row in rows(
                "select l.parent.id from ImageAnnotationLink l "
                "where l.parent.id in (:ids) and l.child.ns = :ns",
                _with_text(params(ids=image_ids), ns=PROVENANCE_NS))}
        annotations = rows("select l.parent.id, l.child.id from DatasetAnnotationLink l "
                           "where l.parent.id in (:ids)", params(ids=ids))
        tables: dict[int, list[TableFile]] = {}
        if annotations:
            on = {int(ann): int(dataset) for dataset, ann in annotations}
            for ann, file_id, file_name in rows(
                    "select a.id, a.file.id, a.file.name from FileAnnotation a "
                    "where a.id in (:ids) and a.file.mimetype = :mime order by a.file.id",
                    _with_text(params(ids=sorted(on)), mime=TABLES_MIMETYPE)):
                tables.setdefault(on[int(ann)], []).append(
                    TableFile(int(file_id), str(file_name or "")))
        images: dict[int, list[ImageOverview]] = {}
        for dataset, image, image_name in links:
            images.setdefault(int(dataset), []).append(ImageOverview(
                int(image), str(image_name or ""), counts.get(int(image), 0),
                int(image) in uploaded))
        return [DatasetOverview(int(did), str(dname or ""),
                                tuple(images.get(int(did), ())),
                                tuple(tables.get(int(did), ())))
                for did, dname in datasets]

    async def datasets_named(self, name: str) -> list[DatasetOverview]:
        return await self.conn.call(self._overviews, name,
                                    what=f"finding the datasets called {name!r}")

    async def aclose(self) -> None:
        """Nothing to release: the queries use the connection's stateless service."""

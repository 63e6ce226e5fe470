"""OMERO.tables over Ice: create (initialize + attach as a FileAnnotation), append, count."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import omero
import omero.grid
import omero.model
from omero.rtypes import rlong, rstring, unwrap

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import NotFound, PermissionDenied, UnsupportedData
from cellprofiler_omero.core.model import (
    ColumnKind,
    TableInfo,
    TableSchema,
    TableTarget,
)
from cellprofiler_omero.core.roles import AsyncClosing
from cellprofiler_omero.core.tables import BULK_ANNOTATION_NS, MEASUREMENTS_NS
from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, IceConnection, params

log = logging.getLogger(__name__)

#: How long to wait for the server to delete a duplicate table made by a race.
DELETE_WAIT_SECONDS = 60.0

_COLUMNS = {
    ColumnKind.LONG: omero.grid.LongColumn, ColumnKind.DOUBLE: omero.grid.DoubleColumn,
    ColumnKind.BOOL: omero.grid.BoolColumn, ColumnKind.IMAGE: omero.grid.ImageColumn,
    ColumnKind.ROI: omero.grid.RoiColumn, ColumnKind.WELL: omero.grid.WellColumn,
    ColumnKind.PLATE: omero.grid.PlateColumn,
}
_LONG_KINDS = (ColumnKind.LONG, ColumnKind.IMAGE, ColumnKind.ROI, ColumnKind.WELL,
               ColumnKind.PLATE)
_TARGETS = ("Project", "Dataset", "Screen", "Plate", "Well", "Image")


class _Resources:
    """A session's SharedResources proxy and the repository new tables go in: both
    stay the same for the session's life, so they are asked for once per connection
    (a run writes several tables) rather than once per table."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.repo: int | None = None

    def repository(self) -> int:
        if self.repo is None:
            self.repo = int(self.proxy.repositories().descriptions[0].getId().getValue())
        return self.repo


_resources: weakref.WeakKeyDictionary[IceConnection, _Resources] = weakref.WeakKeyDictionary()
_resources_lock = threading.Lock()


def shared_resources(conn: IceConnection) -> _Resources:
    """``conn``'s SharedResources (asked for on first use)."""
    with _resources_lock:
        found = _resources.get(conn)
    if found is None:
        found = _Resources(conn.sf.sharedResources())
        with _resources_lock:
            found = _resources.setdefault(conn, found)
    return found


def wire_values(kind: ColumnKind, values: Sequence[Any] | np.ndarray) -> Any:
    """A column's values as Ice takes them: numbers as a contiguous little-endian numpy
    array of the column's type (Ice marshals it from its buffer, with no Python object
    per value), Bool and String columns as a list."""
    if isinstance(values, np.ndarray):
        if kind is ColumnKind.DOUBLE:
            return np.ascontiguousarray(values, dtype="<f8")
        if kind in _LONG_KINDS:
            return np.ascontiguousarray(values, dtype="<i8")
        return values.tolist()
    return list(values)


def grid_columns(schema: TableSchema) -> list[Any]:
    cols = []
    for spec in schema.columns:
        if spec.kind is ColumnKind.STRING:
            cols.append(omero.grid.StringColumn(spec.name, spec.description, spec.size, []))
        else:
            cols.append(_COLUMNS[spec.kind](spec.name, spec.description, []))
    return cols


class IceTableSink(AsyncClosing):
    """The Ice transport's ``TableSink`` for one table."""

    transport = "ice"

    def __init__(self, conn: IceConnection, target: TableTarget, schema: TableSchema,
                 settings: Settings, file_id: int | None) -> None:
        if target.kind not in _TARGETS:
            raise NotFound(f"Tables can be attached to {', '.join(_TARGETS)}, "
                           f"not to {target.kind}.")
        self.conn = conn
        self.target = target
        self.schema = schema
        self.settings = settings
        self._file_id = file_id
        self._annotation_id: int | None = None
        self._table: Any = None
        self._ctx: dict[str, str] = {}
        self._reused = False
        #: The table's row count as this sink knows it (0 once it made the table, then
        #: what its answered appends added); ``None`` until asked: ``info`` then costs no
        #: call. ``row_count`` always asks the server (it makes retries exactly-once).
        self._rows: int | None = None
        #: The table's column names, once known (made or adopted here: the schema's;
        #: opened by file id: asked once): columns never change.
        self._headers: tuple[str, ...] | None = None

    def _target(self) -> Any:
        """The target object, in whichever group it is: one call gives its group (where
        the table goes) and the caller's permissions on it."""
        target = self.conn.sf.getQueryService().findByQuery(
            f"select o from {self.target.kind} o where o.id = :id",
            params(id=self.target.id), ALL_GROUPS)
        if target is None:
            raise NotFound(f"{self.target.kind} {self.target.id} does not exist, or "
                           f"{self.conn.info.user} may not read it.")
        return target

    def _ensure(self) -> Any:
        if self._table is not None:
            return self._table
        sf = self.conn.sf
        target = self._target()
        self._ctx = {"omero.group": str(unwrap(target.details.group.id))}
        shared = shared_resources(self.conn)
        resources = shared.proxy
        if self._file_id is not None:
            self._table = resources.openTable(omero.model.OriginalFileI(rlong(self._file_id),
                                                                        False), self._ctx)
            return self._table
        if self.schema.identity:
            found = self._find()
            if found:
                return self._adopt(resources, *found[0])
        if not target.details.permissions.canAnnotate():
            raise PermissionDenied(
                f"{self.conn.info.user} may not attach a table to {self.target.kind} "
                f"{self.target.id}.", hint="Choose an object you own or may annotate.")
        table = resources.newTable(shared.repository(), self.schema.name, self._ctx)
        if table is None:
            raise NotFound("The server has no OMERO.tables service.")
        table.initialize(grid_columns(self.schema), self._ctx)
        ofile = table.getOriginalFile(self._ctx)
        self._file_id = int(unwrap(ofile.getId()))
        ns = self.target.namespace or (BULK_ANNOTATION_NS if self.schema.has_image_column
                                       else MEASUREMENTS_NS)
        ann = omero.model.FileAnnotationI()
        ann.setNs(rstring(ns))
        if self.schema.identity:
            ann.setDescription(rstring(self.schema.identity))
        ann.setFile(omero.model.OriginalFileI(rlong(self._file_id), False))
        link = getattr(omero.model, f"{self.target.kind}AnnotationLinkI")()
        link.setParent(getattr(omero.model, f"{self.target.kind}I")(rlong(self.target.id),
                                                                     False))
        link.setChild(ann)
        saved = sf.getUpdateService().saveAndReturnObject(link, self._ctx)
        self._annotation_id = int(unwrap(saved.getChild().getId()))
        self._table = table
        self._rows = 0
        self._headers = self.schema.names
        if self.schema.identity:
            # Looked for again: another process preparing the same run may have made one
            # at the same moment. Everyone keeps the oldest, so there is one table.
            found = self._find()
            oldest = found[0] if found else (self._annotation_id, self._file_id)
            if oldest[0] != self._annotation_id:
                mine = self._annotation_id
                log.info("table %s was made by another process at the same time; using "
                         "its table (file %s) and deleting this one", self.schema.name,
                         oldest[1])
                self._discard(mine)
                return self._adopt(resources, *oldest)
        log.info("created table %s (file %s) on %s %s", self.schema.name, self._file_id,
                 self.target.kind, self.target.id)
        return table

    def _find(self) -> list[tuple[int, int]]:
        """``(annotation id, file id)`` of this user's tables on the target that carry the
        schema's identity, oldest first."""
        query = self.conn.sf.getQueryService()
        p = params(id=self.target.id, uid=self.conn.info.user_id)
        p.add("identity", rstring(self.schema.identity))
        rows = query.projection(
            f"select a.id from {self.target.kind}AnnotationLink l join l.child a "
            "where l.parent.id = :id and a.description = :identity "
            "and a.details.owner.id = :uid order by a.id", p, ALL_GROUPS)
        ids = [int(unwrap(row[0])) for row in rows]
        if not ids:
            return []
        rows = query.projection(
            "select a.id, a.file.id from FileAnnotation a where a.id in (:ids) order by a.id",
            params(ids=ids), ALL_GROUPS)
        return [(int(unwrap(row[0])), int(unwrap(row[1]))) for row in rows]

    def _adopt(self, resources: Any, annotation_id: int, file_id: int) -> Any:
        """Continue the table an earlier run (or another process) made."""
        table = resources.openTable(omero.model.OriginalFileI(rlong(file_id), False),
                                    self._ctx)
        if table is None:
            raise NotFound(f"The table of {self.schema.name!r} (file {file_id}) cannot be "
                           "opened.", hint="Check that OMERO.tables is running.")
        names = tuple(h.name for h in table.getHeaders(self._ctx))
        if names != self.schema.names:
            with contextlib.suppress(Exception):
                table.close(self._ctx)
            raise UnsupportedData(
                f"Table {self.schema.name!r} (file {file_id}) on {self.target.kind} "
                f"{self.target.id} belongs to this run but has other columns than this "
                "pipeline writes.",
                hint="Delete that table, or choose 'Start new tables on every run'.")
        self._file_id, self._annotation_id, self._table = file_id, annotation_id, table
        self._headers = names
        self._reused = True
        self._rows = None
        log.info("continuing table %s (file %s) on %s %s", self.schema.name, file_id,
                 self.target.kind, self.target.id)
        return table

    def _discard(self, annotation_id: int) -> None:
        """Delete a table this process just made (and nobody else has written to)."""
        table, self._table = self._table, None
        if table is not None:
            with contextlib.suppress(Exception):
                table.close(self._ctx)
        if not self.conn.delete({"FileAnnotation": [annotation_id]}, self._ctx,
                                wait_seconds=DELETE_WAIT_SECONDS):
            log.warning("could not delete the duplicate table annotation %s; it is "
                        "empty and safe to delete", annotation_id)

    async def info(self) -> TableInfo:
        def run() -> TableInfo:
            table = self._ensure()
            if self._rows is None:
                self._rows = int(table.getNumberOfRows(self._ctx))
            return TableInfo(int(self._file_id or 0), self._annotation_id, self._rows,
                             self.schema.name, reused=self._reused)

        return await self.conn.call(run, what=f"opening table {self.schema.name!r}")

    async def row_count(self) -> int:
        def run() -> int:
            self._rows = int(self._ensure().getNumberOfRows(self._ctx))
            return self._rows

        return await self.conn.call(run, what=f"counting rows of table {self.schema.name!r}")

    async def append(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        def run() -> None:
            table = self._ensure()
            cols = grid_columns(self.schema)
            n = 0
            for col, spec in zip(cols, self.schema.columns, strict=True):
                col.values = wire_values(spec.kind, columns[col.name])
                n = len(col.values)
            # Unknown until the server answers: a lost reply may or may not have added.
            known, self._rows = self._rows, None
            table.addData(cols, self._ctx)
            if known is not None:
                self._rows = known + n

        await self.conn.call(run, what=f"adding rows to table {self.schema.name!r}")

    async def existing_keys(self, key_columns: Sequence[str], range_column: str, low: int,
                            high: int) -> set[tuple[Any, ...]]:
        def run() -> set[tuple[Any, ...]]:
            # One call when no row is in the range (an empty table too), two otherwise.
            table = self._ensure()
            if self._headers is None:
                self._headers = tuple(h.name for h in table.getHeaders(self._ctx))
            rows = list(table.getWhereList(f"({range_column}>={int(low)})&"
                                           f"({range_column}<={int(high)})", {}, 0, 0, 1,
                                           self._ctx))
            if not rows:
                return set()
            indexes = [self._headers.index(c) for c in key_columns]
            data = table.slice(indexes, rows, self._ctx)  # only the key columns
            columns = [list(col.values) for col in data.columns]
            return set(zip(*columns, strict=True))

        return await self.conn.call(run, what=f"checking rows of table {self.schema.name!r}")

    async def aclose(self) -> None:
        table, self._table = self._table, None
        if table is not None:
            def run() -> None:
                try:
                    table.close(self._ctx)
                except Exception as exc:  # the connection may already be gone
                    log.debug("closing table failed: %s", type(exc).__name__)

            await self.conn.call(run, what="closing a table")

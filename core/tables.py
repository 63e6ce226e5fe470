"""Writing OMERO.tables: schema checks, batching, value handling, exactly-once appends.

Rules (documented for users in the README):

* Columns are fixed when the table is created (OMERO cannot add columns later).
  Names must be unique, non-empty, must not start with ``__`` (reserved) and must
  not contain ``/``. More than ``tables.max_columns`` columns is refused up front
  (HDF5's header limit makes OMERO fail somewhere past ~600, depending on names).
* Missing values: Double columns store NaN. Long, Bool and id columns (Image,
  Roi, Well, Plate) have no missing value; a batch with one there is refused,
  naming the column and row, before anything is sent. Declare such a column
  Double if it can be missing.
* Strings longer than their column: with ``tables.long_strings = "truncate"``
  (default) they are cut at a character boundary to fit and a warning names the
  column; with ``"error"`` the batch is refused before anything is sent.
* Rows are buffered and appended in batches (``tables.batch_rows``, and small
  enough for the message limit). A batch that failed with a dropped connection is
  checked against the server's row count before it is sent again: no row is lost
  or written twice.
* With ``key_columns`` (e.g. ImageNumber, ObjectNumber), several writers may append
  to one table (CellProfiler's analysis workers): before each batch the rows whose
  keys the server already holds are dropped, so retries and restarts never
  duplicate a row, whoever wrote it first.
* A schema with an ``identity`` (``table_identity(run_key, label)``) names the table
  across runs: the identity is stored as the description of the table's
  FileAnnotation, and opening such a table first looks for one carrying it on the
  target. Found, it is continued (its columns must match); not found, it is made,
  then looked for again — when two processes made one at the same moment, the one
  with the lower annotation id is kept and the other deleted. So one run key and
  label never has two tables, whoever prepared the run and however often.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import operator
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.errors import OmeroError, UnsupportedData
from cellprofiler_omero.core.model import (
    ColumnKind,
    ColumnSpec,
    TableInfo,
    TableSchema,
    TableTarget,
)
from cellprofiler_omero.core.roles import Connection, TableSink
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)

BULK_ANNOTATION_NS = "openmicroscopy.org/omero/bulk_annotations"
MEASUREMENTS_NS = "openmicroscopy.org/cellprofiler-omero/measurements"

#: How a table's FileAnnotation description starts when it belongs to a run.
TABLE_IDENTITY_PREFIX = "cellprofiler-omero table"
#: Hex digits of the run key in table names (``CellProfiler_Image_run-1a2b3c4d``).
RUN_SUFFIX_DIGITS = 8


def run_key(parts: Sequence[str]) -> str:
    """The SHA-256 (hex) of ``parts``: what identifies a run (see ExportToOMEROTable)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        # Length-prefixed so that no two different part lists hash alike.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def table_identity(key: str, label: str) -> str:
    """The FileAnnotation description that identifies table ``label`` of run ``key``."""
    return f"{TABLE_IDENTITY_PREFIX} {label} of run {key}"


def run_table_name(name: str, key: str) -> str:
    """The table's name with the run it belongs to: ``<name>_run-<first hex digits>``."""
    return f"{name}_run-{key[:RUN_SUFFIX_DIGITS]}"


_INTEGER_KINDS = (ColumnKind.LONG, ColumnKind.IMAGE, ColumnKind.ROI, ColumnKind.WELL,
                  ColumnKind.PLATE)


def check_schema(schema: TableSchema, max_columns: int) -> None:
    """Raise ``UnsupportedData`` for a schema OMERO.tables would refuse or fail on."""
    if not schema.columns:
        raise UnsupportedData(f"Table {schema.name!r} has no columns.")
    if len(schema.columns) > max_columns:
        raise UnsupportedData(
            f"Table {schema.name!r} would have {len(schema.columns)} columns; OMERO.tables "
            f"fails past a few hundred (the limit here is {max_columns}).",
            hint="Export fewer measurements (choose them in the module) or split them over "
                 "several tables; raise tables.max_columns only if your server copes.")
    seen: set[str] = set()
    for col in schema.columns:
        if not col.name:
            raise UnsupportedData(f"Table {schema.name!r} has a column without a name.")
        if col.name.startswith("__"):
            raise UnsupportedData(f"Column name {col.name!r} is reserved by OMERO.tables "
                                  "(it starts with '__').")
        if "/" in col.name:
            raise UnsupportedData(f"Column name {col.name!r} contains '/', which "
                                  "OMERO.tables does not allow.")
        if col.name in seen:
            raise UnsupportedData(f"Column name {col.name!r} appears twice.")
        seen.add(col.name)
        if col.kind is ColumnKind.STRING and col.size <= 0:
            raise UnsupportedData(f"String column {col.name!r} needs a size in bytes.")


def _fit(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= size:
        return text
    return data[:size].decode("utf-8", errors="ignore")


def normalise_column(col: ColumnSpec, values: Sequence[Any] | np.ndarray, *, first_row: int,
                     long_strings: str) -> np.ndarray | list[Any]:
    """Values ready for the wire (numbers as a new numpy array, Bool and String columns as
    Python values); refuses (before sending) what cannot be stored."""
    out: list[Any] = []
    if col.kind is ColumnKind.DOUBLE:
        if isinstance(values, np.ndarray):
            return np.array(values, dtype=np.float64)  # a copy: later changes stay out
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if col.kind in _INTEGER_KINDS or col.kind is ColumnKind.BOOL:
        for offset, v in enumerate(values):
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if missing:
                raise ValueError(
                    f"Row {first_row + offset} has no value in {col.kind.value} column "
                    f"{col.name!r}, which cannot hold missing values; declare it Double.")
            out.append(bool(v) if col.kind is ColumnKind.BOOL else int(v))
        return out if col.kind is ColumnKind.BOOL else np.array(out, dtype=np.int64)
    if col.kind is ColumnKind.STRING:
        truncated = 0
        for offset, v in enumerate(values):
            text = "" if v is None else str(v)
            if len(text.encode("utf-8")) > col.size:
                if long_strings == "error":
                    raise ValueError(
                        f"Row {first_row + offset}: a {len(text.encode('utf-8'))}-byte value "
                        f"does not fit string column {col.name!r} ({col.size} bytes).")
                text = _fit(text, col.size)
                truncated += 1
            out.append(text)
        if truncated:
            log.warning("truncated %d value(s) in column %r to %d bytes", truncated, col.name,
                        col.size)
        return out
    raise UnsupportedData(f"Unknown column kind {col.kind}")


class _Block:
    """Up to ``capacity`` rows of every column (one batch), preallocated: numbers in one
    2D array per type with a row per column, so that each column's values lie contiguous
    and go to Ice as they are (it marshals a numpy array from its buffer, with no Python
    object per value); Bool and String values in lists. Rows are copied in with one
    slice assignment per column, whatever the number of image sets a batch holds."""

    def __init__(self, schema: TableSchema, capacity: int) -> None:
        self.capacity = capacity
        self.rows = 0
        kinds = [c.kind for c in schema.columns]
        self.doubles = np.empty((kinds.count(ColumnKind.DOUBLE), capacity), np.float64)
        self.longs = np.empty((sum(k in _INTEGER_KINDS for k in kinds), capacity), np.int64)
        self.bools = np.empty((kinds.count(ColumnKind.BOOL), capacity), np.bool_)
        self.strings: list[list[Any]] = [[""] * capacity
                                         for _ in range(kinds.count(ColumnKind.STRING))]
        #: Each column's place, in the schema's order (array rows are views).
        self.targets: list[Any] = [self.store(slot.kind)[slot.index]
                                   for slot in _slots(schema)]

    def store(self, kind: ColumnKind) -> np.ndarray | list[list[Any]]:
        """Where columns of ``kind`` are kept (indexed by ``_Slot.index``)."""
        if kind is ColumnKind.DOUBLE:
            return self.doubles
        if kind is ColumnKind.BOOL:
            return self.bools
        if kind is ColumnKind.STRING:
            return self.strings
        return self.longs

    def columns(self, slots: Sequence[_Slot]) -> dict[str, np.ndarray | list[Any]]:
        """The held rows as wire values: numbers as array views (no copy), Bool and
        String values as lists."""
        n = self.rows
        out: dict[str, np.ndarray | list[Any]] = {}
        for slot in slots:
            if slot.kind is ColumnKind.STRING:
                out[slot.name] = self.strings[slot.index][:n]
            elif slot.kind is ColumnKind.BOOL:
                out[slot.name] = self.bools[slot.index][:n].tolist()
            else:
                out[slot.name] = self.store(slot.kind)[slot.index][:n]
        return out


class _Slot:
    """A column's place in a ``_Block``: its kind's store and its row there."""

    __slots__ = ("index", "kind", "name", "numeric", "spec")

    def __init__(self, spec: ColumnSpec, index: int) -> None:
        self.spec, self.name, self.kind, self.index = spec, spec.name, spec.kind, index
        #: numpy dtype kinds copied into the block as they are (``_ready`` checks the rest).
        self.numeric = "biuf" if spec.kind is ColumnKind.DOUBLE else (
            "biu" if spec.kind is not ColumnKind.STRING else "")


def _slots(schema: TableSchema) -> list[_Slot]:
    counts: dict[str, int] = {}
    out = []
    for spec in schema.columns:
        group = ("long" if spec.kind in _INTEGER_KINDS else spec.kind.value)
        out.append(_Slot(spec, counts.get(group, 0)))
        counts[group] = counts.get(group, 0) + 1
    return out


def _ready(col: ColumnSpec, values: Any, first_row: int, long_strings: str
           ) -> np.ndarray | list[Any]:
    """``values`` ready to copy into a block: a 1-D numeric numpy array as it is (the
    copy into the block converts it), checked as ``normalise_column`` checks; anything
    else through ``normalise_column``."""
    if (isinstance(values, np.ndarray) and values.ndim == 1
            and values.dtype.kind in "biuf" and col.kind is not ColumnKind.STRING):
        if values.dtype.kind == "f" and col.kind is not ColumnKind.DOUBLE:
            missing = np.flatnonzero(np.isnan(values))
            if missing.size:
                raise ValueError(
                    f"Row {first_row + int(missing[0])} has no value in {col.kind.value} "
                    f"column {col.name!r}, which cannot hold missing values; declare it "
                    "Double.")
        return values
    return normalise_column(col, values, first_row=first_row, long_strings=long_strings)


class _Group:
    """The Double or the integer columns of a schema, in their store's row order: an
    image set's values for all of them are copied into a block in one assignment when
    they make one numeric 2-D array (``TableWriter.add_rows``)."""

    __slots__ = ("get", "kind", "numeric", "slots")

    def __init__(self, kind: ColumnKind, slots: list[_Slot]) -> None:
        self.kind, self.slots = kind, slots
        self.numeric = slots[0].numeric
        names = [slot.name for slot in slots]
        #: The group's values from a row mapping, as a tuple (one C call).
        self.get: Any = (operator.itemgetter(*names) if len(names) > 1
                         else lambda columns: (columns[names[0]],))


def _groups(slots: Sequence[_Slot]) -> list[_Group]:
    doubles = [slot for slot in slots if slot.kind is ColumnKind.DOUBLE]
    longs = [slot for slot in slots if slot.kind in _INTEGER_KINDS]
    return [_Group(kind, group) for kind, group in ((ColumnKind.DOUBLE, doubles),
                                                    (ColumnKind.LONG, longs)) if group]


def _python(values: np.ndarray | list[Any]) -> list[Any]:
    """Wire values as Python values (keys compared with those the server sends back)."""
    return values.tolist() if isinstance(values, np.ndarray) else values


def _row_bytes(schema: TableSchema) -> int:
    return sum(col.size + 8 if col.kind is ColumnKind.STRING else 9 for col in schema.columns)


class TableWriter:
    """Buffers rows and appends them to one table in batches, exactly once."""

    def __init__(self, manager: SessionManager, target: TableTarget, schema: TableSchema,
                 *, file_id: int | None = None, key_columns: Sequence[str] = ()) -> None:
        settings = manager.settings
        check_schema(schema, settings.tables.max_columns)
        self.manager = manager
        self.target = target
        self.schema = schema
        self.batch_rows = max(1, min(settings.tables.batch_rows, settings.transfer.max_chunk_bytes
                                     // max(1, _row_bytes(schema))))
        self.long_strings = settings.tables.long_strings
        self._sink: TableSink | None = None
        self._sink_conn: Connection | None = None
        self._transport: tuple[str, ...] | None = None
        self._file_id: int | None = file_id
        self.key_columns = tuple(key_columns)
        for name in self.key_columns:
            if name not in schema.names:
                raise ValueError(f"Key column {name!r} is not a column of {schema.name!r}.")
        self._slots = _slots(schema)
        self._groups = _groups(self._slots)
        #: Bool and String columns: always copied one by one.
        self._others = [(index, slot) for index, slot in enumerate(self._slots)
                        if slot.kind in (ColumnKind.BOOL, ColumnKind.STRING)]
        self._names = frozenset(schema.names)
        #: Buffered rows: full blocks waiting, then the block being filled.
        self._blocks: deque[_Block] = deque()
        self._buffered = 0
        self.rows_written = 0
        #: True while ``rows_written`` is known to be the server's row count (the table
        #: was just made or counted, and every append since was answered): the next
        #: batch need not count the rows first. False after any append whose answer did
        #: not arrive, so that a resend counts and never writes a batch twice.
        self._in_step = False

    @property
    def file_id(self) -> int | None:
        return self._file_id

    @property
    def is_open(self) -> bool:
        """True once the table is made or opened (``open`` or the first batch did it)."""
        return self._sink is not None

    async def _open(self, conn: Connection) -> TableSink:
        if self._sink is not None and self._sink_conn is conn:
            return self._sink
        if self._sink is not None:
            with contextlib.suppress(OmeroError):
                await self._sink.aclose()
        name, sink = await self.manager.registry.open_table_writer(
            conn, self.target, self.schema, self._file_id, self._transport)
        self._transport = (name,)
        info = await sink.info()
        self._file_id = info.file_id
        self._sink, self._sink_conn = sink, conn
        self._in_step = info.rows == self.rows_written
        return sink

    async def open(self) -> TableInfo:
        """Create the table (and its annotation) now; returns where it is."""
        async def op(conn: Connection) -> TableInfo:
            sink = await self._open(conn)
            return await sink.info()

        return await self.manager.call(op)

    def add_rows(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Buffer rows (every schema column, equal lengths); nothing is sent yet."""
        lengths = {len(v) for v in columns.values()}
        if columns.keys() != self._names:
            missing, extra = self._names - set(columns), set(columns) - self._names
            raise ValueError(f"Rows must have exactly the table's columns "
                             f"(missing {sorted(missing)}, unknown {sorted(extra)}).")
        if len(lengths) > 1:
            raise ValueError(f"All columns need the same number of rows, got {sorted(lengths)}.")
        n = lengths.pop() if lengths else 0
        first_row = self.rows_written + self._buffered
        # Where the rows go: the rest of the last block, then new blocks. Nothing counts
        # as buffered until every column is in, so a refused column leaves no trace.
        last = self._blocks[-1] if self._blocks else None
        segments: list[tuple[_Block, int, int, int]] = []  # block, its row, source row, n
        fresh: list[_Block] = []
        block, at, done = last, last.rows if last is not None else 0, 0
        while done < n:
            if block is None or at == block.capacity:
                block, at = _Block(self.schema, self.batch_rows), 0
                fresh.append(block)
            count = min(n - done, block.capacity - at)
            segments.append((block, at, done, count))
            at, done = at + count, done + count
        if len(segments) == 1:
            self._copy_whole(columns, *segments[0], first_row)
        else:
            self._copy_split(columns, segments, first_row)
        for block, at, _, count in segments:
            block.rows = at + count
        self._blocks.extend(fresh)
        self._buffered += n

    def _copy_whole(self, columns: Mapping[str, Sequence[Any] | np.ndarray], block: _Block,
                    at: int, _start: int, count: int, first_row: int) -> None:
        """Copy rows that fit in one block, in the fewest steps: the common case (one
        image set's rows). All Double (or integer) columns go in one 2-D assignment
        when together they make a numeric array numpy copies as it is (Double: any
        number; integer: no float, which could hold a NaN), which costs a fraction of
        one assignment per column; otherwise each column of the group is checked and
        converted (``_ready``) first."""
        span = slice(at, at + count)
        for group in self._groups:
            values = group.get(columns)
            store = block.doubles if group.kind is ColumnKind.DOUBLE else block.longs
            with contextlib.suppress(ValueError, TypeError):  # not one array: per column
                together = np.asarray(values)
                if together.ndim == 2 and together.dtype.kind in group.numeric:
                    store[:, span] = together
                    continue
            for slot, column in zip(group.slots, values, strict=True):
                if not (type(column) is np.ndarray and column.dtype.kind in slot.numeric
                        and column.ndim == 1):
                    column = _ready(slot.spec, column, first_row, self.long_strings)
                store[slot.index][span] = column
        for index, slot in self._others:
            block.targets[index][span] = _ready(slot.spec, columns[slot.name], first_row,
                                                self.long_strings)

    def _copy_split(self, columns: Mapping[str, Sequence[Any] | np.ndarray],
                    segments: Sequence[tuple[_Block, int, int, int]], first_row: int) -> None:
        """Copy rows that span blocks (once a batch), column by column: a numpy column
        of a fitting type as it is; anything else checked and converted first."""
        for index, slot in enumerate(self._slots):
            values = columns[slot.name]
            if not (type(values) is np.ndarray and values.dtype.kind in slot.numeric
                    and values.ndim == 1):
                values = _ready(slot.spec, values, first_row, self.long_strings)
            for block, at, start, count in segments:
                block.targets[index][at:at + count] = values[start:start + count]

    async def append(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Buffer rows and send full batches."""
        self.add_rows(columns)
        if self._buffered >= self.batch_rows:
            await self.flush(full_batches_only=True)

    async def flush(self, *, full_batches_only: bool = False) -> int:
        """Send buffered rows; returns the server's row count afterwards."""
        while self._buffered and (not full_batches_only or self._buffered >= self.batch_rows):
            block = self._blocks[0]
            await self._send(block.columns(self._slots), block.rows)
            self._blocks.popleft()  # only once sent: a failed batch stays buffered
            self._buffered -= block.rows
        return self.rows_written

    def _take_batch(self) -> tuple[_Block, int]:
        """Remove the next batch (at most ``batch_rows`` rows) from the buffer, as it
        was buffered (``wire_batch`` makes its wire values)."""
        block = self._blocks.popleft()
        self._buffered -= block.rows
        return block, block.rows

    def wire_batch(self, block: _Block) -> dict[str, np.ndarray | list[Any]]:
        """A taken batch's columns as wire values."""
        return block.columns(self._slots)

    async def _send(self, batch: dict[str, np.ndarray | list[Any]], n: int) -> None:
        if self.key_columns:
            await self._send_keyed(batch, n)
            return
        expected_before = self.rows_written
        attempts = 0

        async def op(conn: Connection) -> int:
            nonlocal attempts
            attempts += 1
            sink = await self._open(conn)
            # Counted only when this writer cannot know the count: a retry, or after an
            # append whose answer was lost (its rows may be on the server). In step, a
            # count would cost a round trip per batch and say what is already known.
            if attempts > 1 or not self._in_step:
                count = await sink.row_count()
                if count == expected_before + n:
                    log.info("batch of %d rows already on the server (a retry); not "
                             "resending", n)
                    self._in_step = True
                    return count
                if count != expected_before:
                    raise OmeroError(
                        f"Table {self._file_id} has {count} rows where {expected_before} "
                        "were expected; another writer changed it.",
                        hint="Write each table from one process (workers send rows to the "
                             "main process).")
            self._in_step = False  # until the server answers this append
            await sink.append(batch)
            self._in_step = True
            return expected_before + n

        self.rows_written = await self.manager.call(op)
        info = self.manager.info
        if info is not None and self._sink is not None:
            self.manager.registry.hook.omero_table_written(
                session=info, table=await self._sink.info(), rows_added=n)

    async def _send_keyed(self, batch: dict[str, np.ndarray | list[Any]], n: int) -> None:
        keys = list(zip(*(_python(batch[name]) for name in self.key_columns), strict=True))
        ranged = [int(k[0]) for k in keys]
        low, high = min(ranged), max(ranged)

        async def op(conn: Connection) -> int:
            sink = await self._open(conn)
            present = await sink.existing_keys(self.key_columns, self.key_columns[0], low,
                                               high)
            keep = [i for i, key in enumerate(keys) if key not in present]
            if len(keep) < n:
                log.info("%d of %d rows already on the server; sending the rest",
                         n - len(keep), n)
            if len(keep) == n:
                await sink.append(batch)
            elif keep:
                await sink.append({name: values[keep] if isinstance(values, np.ndarray)
                                   else [values[i] for i in keep]
                                   for name, values in batch.items()})
            return len(keep)

        added = await self.manager.call(op)
        self.rows_written += added
        info = self.manager.info
        if info is not None and self._sink is not None and added:
            self.manager.registry.hook.omero_table_written(
                session=info, table=await self._sink.info(), rows_added=added)

    async def close(self) -> TableInfo:
        """Flush everything and close the table; returns its final state."""
        await self.flush()

        async def op(conn: Connection) -> TableInfo:
            sink = await self._open(conn)
            info = await sink.info()
            # In step, the writer knows the server's count (every append since the table
            # was made or counted was answered) and only it writes: no call to ask. Keyed
            # writers share the table, so its count is asked for.
            rows = (self.rows_written if self._in_step and not self.key_columns
                    else await sink.row_count())
            return TableInfo(info.file_id, info.annotation_id, rows, info.name)

        info = await self.manager.call(op)
        if self._sink is not None:
            sink, self._sink = self._sink, None
            await sink.aclose()
        return info


class TableAppendFailed(OmeroError):
    """Rows appended behind the pipeline could not be written. ``table`` is the table's
    name, ``rows`` how many rows the failed batch held, ``first_image_number`` the
    smallest ImageNumber among them (``None`` without such a column), ``cause`` the error
    (also ``__cause__``). The batch and every later one are kept: the next ``flush`` or
    ``close`` sends them again, exactly once."""

    def __init__(self, message: str, *, table: str, rows: int,
                 first_image_number: int | None, cause: BaseException,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.table = table
        self.rows = rows
        self.first_image_number = first_image_number
        self.cause = cause


class BackgroundAppends:
    """A ``TableWriter`` whose batches are sent by a thread behind the caller, in order.

    ``add_rows`` buffers (no server call) and hands every full batch to the thread;
    ``flush`` hands over the partial batch too, without waiting. At most ``depth``
    batches wait or are being sent: handing over one more blocks until one is written,
    so memory stays bounded (``depth + 1`` batches of ``writer.batch_rows`` rows). When
    the thread is idle, a partial batch of ``early_rows`` or more goes at once instead of
    waiting to be full, so that sending overlaps the caller's work from the start of a
    run (by default a quarter of a batch, and at least ``EARLY_ROWS_MIN`` rows so that
    a round trip always carries many rows). A table not open yet is made (or opened) by
    the thread at once, while the caller's first rows are buffered: its set-up calls
    are off the caller's path, and the first batch then carries every row buffered
    meanwhile (the thread counts as busy while it opens). If opening fails, the first
    batch opens it again and its failure is raised as a batch's is. A
    batch that fails stops the sending — it and the batches behind it stay queued, in
    order — and the failure is raised by the next ``add_rows``, ``flush``, ``drain`` or
    ``close`` (``TableAppendFailed``); after that, the next ``flush``/``drain``/``close``
    sends them again. The writer's checks (row count, or the keys already on the
    server) make that resend exactly once.

    Only one thread may call this object (CellProfiler's pipeline thread).
    """

    #: The smallest partial batch handed to an idle thread (see the class docstring).
    EARLY_ROWS_MIN = 1000

    def __init__(self, writer: TableWriter, depth: int = 2,
                 early_rows: int | None = None) -> None:
        if depth < 1:
            raise ValueError("Background appends hold at least one batch.")
        self.writer = writer
        self.depth = depth
        self.early_rows = (early_rows if early_rows is not None
                           else max(writer.batch_rows // 4, self.EARLY_ROWS_MIN))
        self._cond = threading.Condition()
        #: Batches to send: as buffered, made into wire values by the thread.
        self._batches: deque[tuple[_Block | dict[str, Any], int]] = deque()
        self._failure: TableAppendFailed | None = None
        self._paused = False  # after a failure, until the caller has seen it
        self._closed = False
        #: While the thread makes or opens the table: partial batches wait to grow.
        self._opening = not writer.is_open
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=f"omero-table-{writer.schema.name}")
        self._thread.start()

    @property
    def pending_batches(self) -> int:
        """Batches waiting or being sent."""
        with self._cond:
            return len(self._batches)

    def add_rows(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> None:
        """Buffer rows and hand full batches to the sending thread (may wait for room);
        first raises an earlier batch's failure."""
        self._raise_failure()
        self.writer.add_rows(columns)
        self._hand_over(full_batches_only=True)

    def flush(self) -> None:
        """Hand every buffered row to the sending thread (may wait for room), without
        waiting for them to be written; first raises an earlier batch's failure."""
        self._raise_failure()
        self._hand_over(full_batches_only=False)

    def drain(self) -> int:
        """Hand over every buffered row and wait until all are written; the rows written
        by this writer. Raises the first failure not raised yet."""
        self.flush()
        with self._cond:
            while self._batches and not self._paused:
                self._cond.wait()
        self._raise_failure()
        return self.writer.rows_written

    def close(self) -> TableInfo:
        """Write everything, stop the thread and close the table; its final state."""
        self.drain()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        return runtime.run(self.writer.close)

    def _hand_over(self, *, full_batches_only: bool) -> None:
        writer = self.writer
        while writer._buffered and (not full_batches_only
                                    or writer._buffered >= writer.batch_rows):
            batch, n = writer._take_batch()
            with self._cond:
                while len(self._batches) >= self.depth and not self._paused:
                    self._cond.wait()
                self._batches.append((batch, n))
                self._cond.notify_all()
        if full_batches_only and self.early_rows <= writer._buffered < writer.batch_rows:
            with self._cond:
                if self._batches or self._paused or self._opening:
                    return  # the thread is busy: the batch grows meanwhile
                batch, n = writer._take_batch()
                self._batches.append((batch, n))
                self._cond.notify_all()

    def _raise_failure(self) -> None:
        """Raise a failure the caller has not seen; once seen, sending resumes."""
        with self._cond:
            failure, self._failure = self._failure, None
            if failure is None:
                self._paused = False
                self._cond.notify_all()
        if failure is not None:
            raise failure from failure.cause

    def _open(self) -> None:
        """Make or open the table before the first batch needs it (see the class)."""
        try:
            runtime.run(self.writer.open)
        except BaseException as exc:  # the first batch opens it again and
            # reports it; a cancellation here must not end the sender (close would wait)
            log.info("opening table %r ahead of its first batch failed (%s); the first "
                     "batch tries again", self.writer.schema.name, exc)
        finally:
            with self._cond:
                self._opening = False
                self._cond.notify_all()

    def _work(self) -> None:
        if self._opening:
            self._open()
        while True:
            with self._cond:
                while not self._closed and (not self._batches or self._paused):
                    self._cond.wait()
                if self._closed and not self._batches:
                    return
                if self._paused:  # closed while paused: the caller gave up
                    return
                raw, n = self._batches[0]
            # Wire values made here, off the caller's thread (kept for a resend).
            batch = self.writer.wire_batch(raw) if isinstance(raw, _Block) else raw
            with self._cond:
                self._batches[0] = (batch, n)
            try:
                runtime.run(self.writer._send, batch, n)
            except BaseException as exc:  # kept for the caller's thread to raise
                numbers = batch.get("ImageNumber")
                first = (min((int(v) for v in numbers), default=None)
                         if numbers is not None else None)
                log.error("appending %d rows to table %r failed: %s", n,
                          self.writer.schema.name, exc)
                with self._cond:
                    self._failure = TableAppendFailed(
                        f"Appending {n} rows (from image set {first}) to OMERO table "
                        f"{self.writer.schema.name!r} failed: {exc}",
                        table=self.writer.schema.name, rows=n, first_image_number=first,
                        cause=exc,
                        hint="The rows are kept and sent again (exactly once) by the next "
                             "flush or at the end of the run; if the server refuses them "
                             "again, check the table and the connection.")
                    self._paused = True
                    self._cond.notify_all()
                continue
            with self._cond:
                self._batches.popleft()
                self._cond.notify_all()

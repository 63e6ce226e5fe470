"""ExportToOMEROTable: CellProfiler measurements as OMERO.tables beside the images.

Tables (named ``<prefix>_Image``, ``<prefix>_<object>``, ``<prefix>_Relationships``)
are attached to the chosen Project, Dataset, Screen, Plate, Well or Image. Every
table has an ``Image`` column with the OMERO id of the image set's source image
(0 when it did not come from OMERO) and is annotated in the bulk-annotation
namespace, so OMERO.web shows rows beside images. ``ImageNumber`` and
``ObjectNumber`` are kept; measurements and the per-image aggregates of object
measurements (``Mean_``, ``Median_``, ``StDev_``) are Double, so a measurement
missing in a cycle is NaN, never a failed write.

Tables are created with all their columns when the run is prepared (OMERO.tables
cannot add columns later). A table that would be wider than ``tables.max_columns``
(OMERO.tables fails somewhere past ~600 columns) is split into parts —
``<prefix>_Nuclei``, ``<prefix>_Nuclei_2`` … — each carrying the key columns, so the
parts join on ImageNumber (and ObjectNumber); the module warns when it does. Rows
are buffered and appended every *N* image sets, at the end of each group and of
the run; CellProfiler's analysis workers append after each image set. Appends
are keyed by ImageNumber (and ObjectNumber), so retries, restarts and several
workers never duplicate or lose a row. Test mode writes nothing.

Objects saved as ROIs by SaveObjectsToOMERO, or loaded from ROIs by
LoadObjectsFromOMERO (both record each object's ROI id as ``OMERO_RoiID``), get a
``Roi`` column (``omero.grid.RoiColumn``) beside the Image column, so OMERO.web goes
from a row to its outline.

Columns come in a fixed order, the same on every run: the key columns
(ImageNumber, ObjectNumber, Image[, Roi]), then the measurements sorted by name, then (in
the Image table) the per-image aggregates sorted by object, measurement and
aggregate. CellProfiler's own column order can change from process to process.

A run is a resumable unit. Its run key is the SHA-256 of (see ``run_key_parts``):
every module of the pipeline (name, revision, enabled, settings — for this module
its parent, prefix, text length and relationships choice, not how often it writes),
and every image set's source (the URL, series, frame, channel, Z and T of every
image of every image set, by image number). Tables are named
``<prefix>_<label>_run-<first 8 hex digits of the key>`` and their FileAnnotation's
description is ``cellprofiler-omero table <label> of run <key>``. A run whose key
matches tables of the same user on the parent continues them (rows already there
are skipped by their keys): a rerun after a complete run adds nothing, a rerun after
a killed run or an expired session completes the tables the first attempt left,
and cluster jobs of one pipeline over slices (``-f``/``-l``) of the same file list
fill one set of tables. Changing the pipeline, the images or the parent changes the
key, and the run makes new tables beside the old ones. "Start new tables on every
run" adds a random part to the key, so every run makes new tables.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from cellprofiler_core.constants.measurement import (
    C_C,
    C_FRAME,
    C_OBJECTS_URL,
    C_SERIES,
    C_T,
    C_URL,
    C_Z,
    COLTYPE_INTEGER,
    MCA_AVAILABLE_POST_RUN,
)
from cellprofiler_core.module import Module
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.do_something import DoSomething
from cellprofiler_core.setting.text import Integer, Text

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.errors import OmeroError, UnsupportedData
from cellprofiler_omero.core.model import (
    ColumnKind,
    ColumnSpec,
    TableSchema,
    TableTarget,
)
from cellprofiler_omero.core.tables import (
    BackgroundAppends,
    TableWriter,
    check_schema,
    run_key,
    run_table_name,
    table_identity,
)
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.cp_integration.save_images import _tell, finish_uploads, source_images
from cellprofiler_omero.cp_integration.save_objects import ROI_ID_FEATURE
from cellprofiler_omero.cp_integration.targets import PARENT_KINDS, parse_target

log = logging.getLogger(__name__)

IMAGE = "Image"
RELATIONSHIPS = "Relationships"
AGGREGATES = ("Mean", "Median", "StDev")
FEATURE_PREFIX = "OMERO_TableFile_"
#: The ``omero.grid.RoiColumn`` SaveObjectsToOMERO's per-object ``ROI_ID_FEATURE``
#: (each object's ROI id) becomes in the object's table, beside the Image column.
ROI_COLUMN = "Roi"
#: Version of the run key's definition: bump it when ``run_key_parts`` changes.
RUN_KEY_VERSION = "cellprofiler-omero run key 1"
#: The Image measurement categories that say where an image set's images come from.
IMAGE_SET_SOURCES = (C_URL, C_OBJECTS_URL, C_SERIES, C_FRAME, C_C, C_Z, C_T,
                     "ObjectsSeries", "ObjectsFrame", "ObjectsChannel", "ObjectsZPlane",
                     "ObjectsTimepoint")


def pipeline_run_key_parts(workspace: Any, version: str) -> list[str]:
    """What identifies a run, for the modules that write once per run (the tables, the
    key-value pairs): ``version``, every module's name, revision, enabled state and
    settings (or its own ``run_key_settings()``), then every image set's sources by image
    number. Same pipeline over the same images: same parts, so a rerun finds its writes."""
    parts = [version]
    for module in workspace.pipeline.modules():
        own = getattr(module, "run_key_settings", None)
        values = own() if callable(own) else [str(s.unicode_value) for s in module.settings()]
        parts += [f"module {module.module_num} {module.module_name} "
                  f"v{module.variable_revision_number} enabled={module.enabled}",
                  str(len(values)), *values]
    m = workspace.measurements
    numbers = list(m.get_image_numbers())
    parts.append(f"image sets {len(numbers)}")
    features = sorted(f for f in m.get_feature_names(IMAGE)
                      if f.split("_", 1)[0] in IMAGE_SET_SOURCES)
    for feature in features:
        values = m.get_measurement(IMAGE, feature, numbers) if numbers else []
        parts += [feature, *(str(v) for v in values)]
    return parts


@dataclass(frozen=True)
class TablePlan:
    """One table: its schema, its key columns, and where each column's values come from."""

    schema: TableSchema
    keys: tuple[str, ...]
    object_name: str
    features: tuple[str, ...]
    aggregates: tuple[tuple[str, str, str], ...] = ()  # (column, object, feature)
    label: str = ""  # the table's name without the prefix: Image, Nuclei, Nuclei_2 …


def _string_size(coltype: str, default: int) -> int:
    match = re.match(r"varchar\((\d+)\)", coltype)
    # LoadData declares a CSV column whose values are all empty as varchar(0); a string
    # column of OMERO.tables needs at least one byte.
    return max(1, int(match.group(1))) if match else default


def _split(prefix: str, label: str, keys: list[ColumnSpec], columns: list[ColumnSpec],
           max_columns: int) -> list[tuple[str, tuple[ColumnSpec, ...]]]:
    """``(label, columns)`` per part, each part within ``max_columns`` with the key columns."""
    room = max(1, max_columns - len(keys))
    chunks = [columns[i:i + room] for i in range(0, len(columns), room)] or [[]]
    return [(label if n == 0 else f"{label}_{n + 1}", tuple(keys + chunk))
            for n, chunk in enumerate(chunks)]


def _one_type_each(features: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """One column type per feature. Two modules can declare one measurement with two
    types (Images and Groups both declare Metadata_SeriesName when a pipeline groups by
    it); text wins, since a text column holds either."""
    chosen: dict[str, str] = {}
    for feature, coltype in features:
        if feature not in chosen or coltype.startswith("varchar"):
            chosen[feature] = coltype
    return set(chosen.items())


def plan_tables(columns: list[tuple[Any, ...]], prefix: str, string_size: int,
                relationships: bool, max_columns: int = 500) -> list[TablePlan]:
    """The tables for a pipeline's measurement columns (see the module docstring)."""
    by_object: dict[str, list[tuple[str, str]]] = {}
    for col in columns:
        obj, feature, coltype = col[0], col[1], col[2]
        attrs = col[3] if len(col) > 3 else {}
        if obj == "Experiment" or (attrs or {}).get(MCA_AVAILABLE_POST_RUN):
            continue
        if feature in ("ImageNumber", "ObjectNumber"):
            continue
        by_object.setdefault(obj, []).append((feature, coltype))
    # Sorted: CellProfiler's column order can differ between processes, and the tables
    # of a run (and its rerun) must have the same columns in the same order.
    by_object = {obj: sorted(_one_type_each(features)) for obj, features in by_object.items()}
    plans = []

    def spec(feature: str, coltype: str) -> ColumnSpec:
        if coltype.startswith("varchar"):
            return ColumnSpec(feature, ColumnKind.STRING, _string_size(coltype, string_size))
        return ColumnSpec(feature, ColumnKind.DOUBLE)

    image_features = by_object.pop(IMAGE, [])
    aggregates = []
    for obj, features in sorted(by_object.items()):
        for feature, coltype in features:
            if not coltype.startswith("varchar") and feature != ROI_ID_FEATURE:
                aggregates += [(f"{agg}_{obj}_{feature}", obj, feature) for agg in AGGREGATES]
    image_keys = [ColumnSpec("ImageNumber", ColumnKind.LONG), ColumnSpec(IMAGE, ColumnKind.IMAGE)]
    image_columns = [spec(f, c) for f, c in image_features]
    image_columns += [ColumnSpec(name, ColumnKind.DOUBLE) for name, _, _ in aggregates]
    by_column = {name: (obj, feature) for name, obj, feature in aggregates}
    for label, cols in _split(prefix, IMAGE, image_keys, image_columns, max_columns):
        names = {c.name for c in cols}
        plans.append(TablePlan(
            TableSchema(f"{prefix}_{label}", cols), ("ImageNumber",), IMAGE,
            tuple(f for f, _ in image_features if f in names),
            tuple((n, *by_column[n]) for n, _, _ in aggregates if n in names), label))
    for obj, features in sorted(by_object.items()):
        keys = [ColumnSpec("ImageNumber", ColumnKind.LONG),
                ColumnSpec("ObjectNumber", ColumnKind.LONG), ColumnSpec(IMAGE, ColumnKind.IMAGE)]
        if any(feature == ROI_ID_FEATURE for feature, _ in features):
            # Objects saved as ROIs: a RoiColumn beside the Image column (in every part),
            # so OMERO.web's tools go from a row to its outline.
            keys.append(ColumnSpec(ROI_COLUMN, ColumnKind.ROI))
            features = [(f, c) for f, c in features if f != ROI_ID_FEATURE]
        for label, cols in _split(prefix, obj, keys, [spec(f, c) for f, c in features],
                                  max_columns):
            names = {c.name for c in cols}
            plans.append(TablePlan(TableSchema(f"{prefix}_{label}", cols),
                                   ("ImageNumber", "ObjectNumber"), obj,
                                   tuple(f for f, _ in features if f in names), (), label))
    if relationships:
        links = [ColumnSpec("ImageNumber1", ColumnKind.LONG),
                ColumnSpec("ObjectNumber1", ColumnKind.LONG),
                ColumnSpec("ImageNumber2", ColumnKind.LONG),
                ColumnSpec("ObjectNumber2", ColumnKind.LONG),
                ColumnSpec("Module", ColumnKind.LONG),
                ColumnSpec("Relationship", ColumnKind.STRING, 64),
                ColumnSpec("Object1", ColumnKind.STRING, 64),
                ColumnSpec("Object2", ColumnKind.STRING, 64)]
        plans.append(TablePlan(TableSchema(f"{prefix}_{RELATIONSHIPS}", tuple(links)),
                               ("ImageNumber1", "ObjectNumber1", "ImageNumber2",
                                "ObjectNumber2", "Module", "Relationship"), RELATIONSHIPS, (),
                               (), RELATIONSHIPS))
    return plans


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _aggregate(kind: str, values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    if kind == "Mean":
        return float(values.mean())
    if kind == "Median":
        return float(np.median(values))
    return float(values.std())


#: Batches (``tables.batch_rows`` rows each) a table may have waiting behind the pipeline.
BACKGROUND_BATCHES = 2


def in_analysis_worker() -> bool:
    """True inside a CellProfiler analysis worker (no post_run runs there)."""
    return "--work-server" in sys.argv


class ExportToOMEROTable(Module):
    """Export measurements to OMERO.tables attached to an OMERO object.

The tables (PREFIX_Image, PREFIX_OBJECTS for each kind of object, PREFIX_Relationships) are
attached to the chosen Project, Dataset, Screen, Plate, Well or Image, with an
``Image`` column so that OMERO.web shows each row beside its image. Columns are in
a fixed order: the key columns (ImageNumber, ObjectNumber, Image), then the
measurements sorted by name, then the per-image Mean/Median/StDev of object
measurements sorted by object and measurement.

**Reruns continue the run's tables.** Every run has a *run key*: a hash of the
pipeline's modules and settings, of every image set's images (their URLs, series,
frames, channels, planes) and of the object the tables go to. Table names end in
``_run-`` and the key's first 8 characters, and each table carries the full key in
its annotation's description. Running the same pipeline on the same images into
the same object again finds that run's tables and adds only the rows they lack: a
rerun after a complete run changes nothing, and a rerun after a run that was
stopped, crashed or lost its session completes the tables instead of leaving a
second set beside them. Change the pipeline, the images or the object and the run
makes new tables (with another suffix) beside the earlier ones.

To start new tables anyway, set *Start new tables on every run?* to Yes (each run
then gets tables of its own), or delete the old tables in OMERO before rerunning.
"""

    module_name = "ExportToOMEROTable"
    category = "File Processing"
    variable_revision_number = 2

    def create_settings(self) -> None:
        self.parent_kind = Choice("Attach the tables to", list(PARENT_KINDS), "Dataset",
                                  doc="The kind of OMERO object the tables are attached to.")
        self.parent = Text("Object", "",
                           doc="Its id, or its OMERO.web link (any form OMERO users copy).")
        self.table_prefix = Text("Table name prefix", "CellProfiler",
                                 doc="Tables are named <prefix>_Image, <prefix>_<objects> "
                                     "and <prefix>_Relationships.")
        self.flush_every = Integer("Write rows every N image sets", 100, minval=1,
                                   doc="Buffered rows are written at least this often, and "
                                       "at the end of every group and of the run: a crash "
                                       "loses at most this many image sets' rows.")
        self.string_size = Integer("Maximum text length", 256, minval=1,
                                   doc="Bytes kept of text measurements without a declared "
                                       "length (longer text is cut, with a warning).")
        self.wants_relationships = Binary("Export object relationships?", True,
                                          doc="A table of relationships between objects.")
        self.fresh_tables = Binary(
            "Start new tables on every run?", False,
            doc="No (recommended): a rerun of the same pipeline on the same images "
                "continues that run's tables, adding only the rows they lack, so a run "
                "that was stopped can simply be run again. Yes: every run makes new "
                "tables of its own, even for the same pipeline and images.")
        self.check_parent = DoSomething("Check that the object exists and you may annotate "
                                        "it", "Check", self.on_check_parent)

    def settings(self) -> list[Any]:
        return [self.parent_kind, self.parent, self.table_prefix, self.flush_every,
                self.string_size, self.wants_relationships, self.fresh_tables]

    def upgrade_settings(self, setting_values: list[str], variable_revision_number: int,
                         module_name: str) -> tuple[list[str], int]:
        if variable_revision_number == 1:
            # Revision 2 added "Start new tables on every run?" (No: reruns continue).
            setting_values = [*setting_values, "No"]
            variable_revision_number = 2
        return setting_values, variable_revision_number

    def visible_settings(self) -> list[Any]:
        return [*self.settings(), self.check_parent]

    def volumetric(self) -> bool:
        return True

    # -- checks ----------------------------------------------------------------------------

    def target(self) -> TableTarget:
        return TableTarget(self.parent_kind.value,
                           parse_target(self.parent.value, self.parent_kind.value))

    def plans(self, pipeline: Any) -> list[TablePlan]:
        columns = [c for c in pipeline.get_measurement_columns(self)
                   if not c[1].startswith(FEATURE_PREFIX)]
        return plan_tables(columns, self.table_prefix.value, int(self.string_size.value),
                           bool(self.wants_relationships.value),
                           session.manager().settings.tables.max_columns)

    def validate_module(self, pipeline: Any) -> None:
        try:
            self.target()
        except OmeroError as exc:
            raise ValidationError(str(exc), self.parent) from None
        limit = session.manager().settings.tables.max_columns
        for plan in self.plans(pipeline):
            try:
                check_schema(plan.schema, limit)
            except UnsupportedData as exc:
                raise ValidationError(str(exc), self.table_prefix) from None

    def validate_module_warnings(self, pipeline: Any) -> None:
        split = sorted({p.label.rsplit("_", 1)[0] for p in self.plans(pipeline)
                        if p.label != p.label.rsplit("_", 1)[0] and p.label[-1].isdigit()})
        if split:
            limit = session.manager().settings.tables.max_columns
            raise ValidationError(
                f"{', '.join(split)} measurements need more than {limit} columns, which "
                "OMERO.tables cannot hold in one table: they are written as several tables "
                "(…_2, …_3) that join on ImageNumber/ObjectNumber. Measure fewer features "
                "to keep one table.", self.table_prefix)

    def check_access(self) -> str:
        target = self.target()
        mgr = session.manager()

        async def check() -> bool:
            return await mgr.call(lambda conn: conn.can_write(target.kind, target.id),
                                  what=f"checking {target.kind} {target.id}")

        runtime.run(check)  # NotFound when it does not exist or cannot be read
        session.after_connect(mgr)
        return f"{target.kind} {target.id} exists; tables will be attached to it."

    def on_check_parent(self) -> None:
        try:
            _tell(self.check_access())
        except OmeroError as exc:
            _tell(f"Cannot attach tables there: {exc}", error=True)

    # -- the run key -----------------------------------------------------------------------

    def run_key_settings(self) -> list[str]:
        """This module's part of the run key: what decides which tables rows go to."""
        target = self.target()
        return [target.kind, str(target.id), self.table_prefix.value,
                str(int(self.string_size.value)), str(bool(self.wants_relationships.value))]

    def run_key_parts(self, workspace: Any) -> list[str]:
        """What identifies this run (documented in the module's help and ARCHITECTURE.md):
        see :func:`pipeline_run_key_parts`; a fresh-tables run adds a random part."""
        parts = pipeline_run_key_parts(workspace, RUN_KEY_VERSION)
        if self.fresh_tables.value:
            parts.append(f"fresh {uuid.uuid4().hex}")
        return parts

    # -- the run ---------------------------------------------------------------------------

    _run_state: dict[str, Any] | None = None

    def _state(self) -> dict[str, Any]:
        state = self._run_state
        if state is None:
            state = {"writers": {}, "appenders": {}, "pending": 0, "plans": None}
            self._run_state = state
        return state

    def prepare_run(self, workspace: Any) -> bool:
        self._run_state = None
        if workspace.pipeline.test_mode:
            return True
        plans = self.plans(workspace.pipeline)
        limit = session.manager().settings.tables.max_columns
        for plan in plans:
            check_schema(plan.schema, limit)
        target = self.target()
        mgr = session.manager()
        state = self._state()
        key = run_key(self.run_key_parts(workspace))
        plans = [replace(plan, schema=replace(
            plan.schema, name=run_table_name(plan.schema.name, key),
            identity=table_identity(key, plan.label))) for plan in plans]
        state["plans"] = plans
        log.info("ExportToOMEROTable: run key %s", key)
        for plan in plans:
            writer = TableWriter(mgr, target, plan.schema, key_columns=plan.keys)
            info = runtime.run(writer.open)
            if info.reused:
                log.info("continuing table %s (OriginalFile %s, %d rows) of an earlier "
                         "attempt of this run", info.name, info.file_id, info.rows)
            state["writers"][plan.schema.name] = writer
            workspace.measurements.add_experiment_measurement(
                FEATURE_PREFIX + plan.label, info.file_id)
        session.after_connect(mgr)
        return True

    def _writers(self, workspace: Any) -> dict[str, TableWriter]:
        state = self._state()
        if state["plans"] is None:  # an analysis worker: open the tables the run made
            state["plans"] = self.plans(workspace.pipeline)
        writers: dict[str, TableWriter] = state["writers"]
        if len(writers) < len(state["plans"]):
            mgr = session.manager()
            target = self.target()
            for plan in state["plans"]:
                if plan.schema.name in writers:
                    continue
                file_id = workspace.measurements.get_experiment_measurement(
                    FEATURE_PREFIX + plan.label)
                writers[plan.schema.name] = TableWriter(
                    mgr, target, plan.schema, file_id=int(file_id), key_columns=plan.keys)
        return writers

    def _appenders(self, workspace: Any) -> dict[str, BackgroundAppends]:
        """In one process, each table's rows are appended by a thread behind the
        pipeline (bounded; failures raised by the next image set or at the end). An
        analysis worker writes before it reports the image set done instead: its
        process may be stopped as soon as the run's last image set is in."""
        appenders: dict[str, BackgroundAppends] = self._state()["appenders"]
        if in_analysis_worker():
            return appenders
        for name, writer in self._writers(workspace).items():
            if name not in appenders:
                appenders[name] = BackgroundAppends(writer, depth=BACKGROUND_BATCHES)
        return appenders

    def run(self, workspace: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        # An image SaveImagesToOMERO is still writing may be made again (a write cut
        # off mid-way) under a new id: its rows wait until the id is final.
        finish_uploads()
        m = workspace.measurements
        image_number = int(m.image_set_number)
        sources = source_images(m)
        image_id = sources[0][0] if sources else 0
        writers = self._writers(workspace)
        appenders = self._appenders(workspace)
        state = self._state()
        for plan in state["plans"]:
            rows = self._rows(plan, m, image_number, image_id)
            if rows and len(next(iter(rows.values()))):
                sink = appenders.get(plan.schema.name) or writers[plan.schema.name]
                sink.add_rows(rows)  # full batches go to the thread behind the pipeline
        state["pending"] += 1
        if in_analysis_worker() or state["pending"] >= int(self.flush_every.value):
            self.flush()

    def _rows(self, plan: TablePlan, m: Any, image_number: int, image_id: int
              ) -> dict[str, list[Any]]:
        kinds = {c.name: c.kind for c in plan.schema.columns}
        if plan.object_name == IMAGE:
            row: dict[str, list[Any]] = {"ImageNumber": [image_number], IMAGE: [image_id]}
            for feature in plan.features:
                value = m.get_current_image_measurement(feature) \
                    if m.has_feature(IMAGE, feature) else None
                row[feature] = [self._cell(kinds[feature], value)]
            for column, obj, feature in plan.aggregates:
                values = m.get_current_measurement(obj, feature) \
                    if m.has_feature(obj, feature) else None
                arr = np.asarray([] if values is None else values, dtype=float).ravel()
                row[column] = [_aggregate(column.split("_", 1)[0], arr)]
            return row
        if plan.object_name == RELATIONSHIPS:
            return self._relationships(m, image_number)
        n = 0
        data: dict[str, Any] = {}
        for feature in plan.features:
            values = m.get_current_measurement(plan.object_name, feature) \
                if m.has_feature(plan.object_name, feature) else None
            values = [] if values is None else list(np.asarray(values).ravel())
            data[feature] = values
            n = max(n, len(values))
        roi_ids: list[Any] = []
        if ROI_COLUMN in kinds and m.has_feature(plan.object_name, ROI_ID_FEATURE):
            found = m.get_current_measurement(plan.object_name, ROI_ID_FEATURE)
            roi_ids = [] if found is None else list(np.asarray(found).ravel())
            n = max(n, len(roi_ids))
        rows = {"ImageNumber": [image_number] * n, "ObjectNumber": list(range(1, n + 1)),
                IMAGE: [image_id] * n}
        if ROI_COLUMN in kinds:
            # 0 where an object has no ROI (as the Image column's 0: not from OMERO).
            rows[ROI_COLUMN] = [int(_number(roi_ids[i])) if i < len(roi_ids)
                                and math.isfinite(_number(roi_ids[i])) else 0
                                for i in range(n)]
        for feature in plan.features:
            values = data[feature]
            rows[feature] = [self._cell(kinds[feature], values[i] if i < len(values) else None)
                             for i in range(n)]
        return rows

    @staticmethod
    def _cell(kind: ColumnKind, value: Any) -> Any:
        if kind is ColumnKind.STRING:
            # A text measurement missing for an image set reads back from CellProfiler's
            # HDF5 measurements as NaN in another process: empty, as when it is None.
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            return "" if missing else str(value)
        return _number(value)

    def _relationships(self, m: Any, image_number: int) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in (
            "ImageNumber1", "ObjectNumber1", "ImageNumber2", "ObjectNumber2", "Module",
            "Relationship", "Object1", "Object2")}
        for module_number, relationship, obj1, obj2 in m.get_relationship_groups():
            records = m.get_relationships(module_number, relationship, obj1, obj2,
                                          image_numbers=[image_number])
            for rec in records:
                i1, o1, i2, o2 = (int(v) for v in rec)
                # Recorded once: in the cycle of the later of its two image sets.
                if max(i1, i2) != image_number:
                    continue
                for key, value in (("ImageNumber1", i1), ("ObjectNumber1", o1),
                                   ("ImageNumber2", i2), ("ObjectNumber2", o2),
                                   ("Module", int(module_number)),
                                   ("Relationship", relationship), ("Object1", obj1),
                                   ("Object2", obj2)):
                    out[key].append(value)
        return out

    def flush(self) -> None:
        """Send the buffered rows: handed to the background thread without waiting in
        one process, written before returning in an analysis worker."""
        state = self._state()
        for name, writer in state["writers"].items():
            appender = state["appenders"].get(name)
            if appender is not None:
                appender.flush()
            else:
                runtime.run(writer.flush)
        state["pending"] = 0

    def post_group(self, workspace: Any, *args: Any) -> None:
        if not workspace.pipeline.test_mode:
            self.flush()

    def post_run(self, workspace: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        state = self._state()
        summary = []
        appenders = state["appenders"]
        for name, writer in state["writers"].items():
            appender = appenders.pop(name, None)
            info = appender.close() if appender is not None else runtime.run(writer.close)
            summary.append((name, info.file_id, info.rows))
        state["writers"] = {}
        self._summary = summary
        for name, file_id, rows in summary:
            log.info("table %s (OriginalFile %s) holds %d rows", name, file_id, rows)
        if self.show_window:
            workspace.display_data.tables = summary

    def get_measurement_columns(self, pipeline: Any) -> list[tuple[str, str, str]]:
        return [("Experiment", FEATURE_PREFIX + plan.label, COLTYPE_INTEGER)
                for plan in self.plans(pipeline)]

    def display_post_run(self, workspace: Any, figure: Any) -> None:
        tables = getattr(workspace.display_data, "tables", [])
        figure.set_subplots((1, 1))
        figure.subplot_table(0, 0, [[n, str(f), str(r)] for n, f, r in tables],
                             col_labels=["Table", "OriginalFile", "Rows"])

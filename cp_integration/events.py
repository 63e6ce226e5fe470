"""A machine-readable record of what a CellProfiler run wrote to OMERO.

When ``CELLPROFILER_OMERO_EVENTS_FILE`` names a file, every process of the run (the
CellProfiler process and its analysis workers, which inherit the environment)
appends one JSON object per line to it from the observer hooks: an
``image_uploaded`` event per image saved (``omero_image_uploaded``), a
``table_written`` event per batch of rows added (``omero_table_written``) and a
``rois_saved`` event per image that received ROIs (``omero_rois_saved``). The demo
counts its images, rows and ROIs from this file, and a cluster job can too; nothing
needs to read CellProfiler's log.

Each line is written with one ``write`` to a file opened for appending, so lines from
several processes do not interleave.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.model import NewImage, TableInfo, UploadedImage
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.core.shapes import SavedRoi

log = logging.getLogger(__name__)

#: The environment variable naming the events file.
EVENTS_ENV = "CELLPROFILER_OMERO_EVENTS_FILE"
#: The plugin name of ``EventLog`` in a session manager's registry.
EVENTS_PLUGIN = "cellprofiler-omero-events"


@dataclass(frozen=True)
class ImageEvent:
    """An image saved to OMERO (``reused``: an earlier attempt had made it)."""

    image_id: int
    name: str
    dataset_id: int | None
    reused: bool


@dataclass(frozen=True)
class TableEvent:
    """Rows added to a table; ``rows`` is how many it holds after them."""

    file_id: int
    name: str
    rows_added: int
    rows: int


@dataclass(frozen=True)
class RoiEvent:
    """ROIs saved on an image: ``rois`` in all, ``added`` of them made now (the others
    were found, made by an earlier attempt or run)."""

    image_id: int
    rois: int
    added: int


class EventLog:
    """Observer plugin appending the run's uploads and table writes to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
        except OSError as exc:  # a record is a report, never a reason to fail the run
            log.warning("cannot append to the events file %s (%s)", self.path,
                        exc.strerror or type(exc).__name__)

    @hookimpl
    def omero_image_uploaded(self, session: SessionInfo, image: UploadedImage,
                             spec: NewImage) -> None:
        self._append({"event": "image_uploaded", "image_id": image.id, "name": image.name,
                      "dataset_id": image.dataset_id, "reused": image.reused})

    @hookimpl
    def omero_table_written(self, session: SessionInfo, table: TableInfo,
                            rows_added: int) -> None:
        self._append({"event": "table_written", "file_id": table.file_id,
                      "name": table.name, "rows_added": rows_added, "rows": table.rows})


    @hookimpl
    def omero_rois_saved(self, session: SessionInfo, image_id: int,
                         rois: Sequence[SavedRoi]) -> None:
        self._append({"event": "rois_saved", "image_id": image_id, "rois": len(rois),
                      "added": sum(1 for roi in rois if not roi.reused)})


def event_log_from_environment() -> EventLog | None:
    """The ``EventLog`` for ``$CELLPROFILER_OMERO_EVENTS_FILE``, or ``None`` when unset."""
    path = os.environ.get(EVENTS_ENV)
    return EventLog(Path(path)) if path else None


def read_events(path: Path, offset: int = 0
                ) -> tuple[list[ImageEvent | TableEvent | RoiEvent], int]:
    """The events in ``path`` from byte ``offset`` on, and the offset after the last
    complete line (pass it back to read only what was added since)."""
    try:
        with path.open("rb") as source:
            source.seek(offset)
            data = source.read()
    except FileNotFoundError:
        return [], offset
    complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits
    return list(_parse(complete.decode("utf-8").splitlines())), offset + len(complete)


def _parse(lines: list[str]) -> Iterator[ImageEvent | TableEvent | RoiEvent]:
    for line in lines:
        record = json.loads(line)
        if record.get("event") == "image_uploaded":
            yield ImageEvent(int(record["image_id"]), str(record["name"]),
                             record["dataset_id"], bool(record["reused"]))
        elif record.get("event") == "table_written":
            yield TableEvent(int(record["file_id"]), str(record["name"]),
                             int(record["rows_added"]), int(record["rows"]))
        elif record.get("event") == "rois_saved":
            yield RoiEvent(int(record["image_id"]), int(record["rois"]),
                           int(record["added"]))

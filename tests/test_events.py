"""The run's events file: what the observer hooks saw, for the demo and for scripts."""

from __future__ import annotations

from pathlib import Path

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.model import NewImage, TableInfo, UploadedImage
from cellprofiler_omero.core.registry import Registry
from cellprofiler_omero.core.roles import ServerAddress, SessionInfo
from cellprofiler_omero.cp_integration.events import (
    EVENTS_PLUGIN,
    EventLog,
    ImageEvent,
    TableEvent,
    read_events,
)

SESSION = SessionInfo(server=ServerAddress("omero.example.org", 4064), user="demo",
                      user_id=2, group="demo", group_id=3, source="password")


def test_the_observer_hooks_append_one_event_each_and_reads_continue(tmp_path: Path
                                                                     ) -> None:
    path = tmp_path / "events.jsonl"
    registry = Registry(Settings(), load_entry_points=False)
    registry.register(EventLog(path), EVENTS_PLUGIN)
    registry.hook.omero_image_uploaded(
        session=SESSION, image=UploadedImage(7, "nuclei", 5, reused=True),
        spec=NewImage(name="nuclei", client_key="k", channel_names=("C0",)))
    events, offset = read_events(path)
    assert events == [ImageEvent(7, "nuclei", 5, True)]
    registry.hook.omero_table_written(
        session=SESSION, table=TableInfo(file_id=9, annotation_id=10, rows=40, name="t"),
        rows_added=15)
    later, offset = read_events(path, offset)
    assert later == [TableEvent(9, "t", 15, 40)]
    assert read_events(path, offset) == ([], offset)


def test_a_line_still_being_written_is_read_once_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line = ('{"event": "table_written", "file_id": 1, "name": "t", "rows_added": 2, '
            '"rows": 2}\n')
    path.write_text(line[:20])
    assert read_events(path) == ([], 0)
    path.write_text(line)
    assert read_events(path) == ([TableEvent(1, "t", 2, 2)], len(line))
    assert read_events(tmp_path / "missing.jsonl") == ([], 0)

"""Start-up of a run over OMERO images: no per-image round trips, and the first image set
on its way as soon as the run is prepared.

Over a wide-area network every round trip before the first image set costs the user
20 ms or more, so CellProfiler's preparation of a run (the file list's plane
extraction, Metadata, NamesAndTypes making the image sets) must cost a fixed number of
calls, whatever the number of images; and the first image set, which can overlap
nothing else, is read as soon as NamesAndTypes knows it. Calls are counted by the
shared emulator for the test's session.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator
from tests.conftest import run

pytestmark = pytest.mark.cellprofiler

#: Calls CellProfiler's ``prepare_run`` of a pipeline over OMERO images may make once
#: the session is open, however many images the file list holds: the batched metadata
#: queries (sent before plane extraction; nothing asked again after NamesAndTypes) and,
#: on a connection's first query, its query and config services and the server's
#: settings (``IConfig.getConfigValues``).
STARTUP_CALLS = {"IQuery.projection": 3, "ServiceFactory.getQueryService": 1,
                 "ServiceFactory.getConfigService": 1, "IConfig.getConfigValues": 1}


@pytest.fixture
def manager(settings_for: Any, cellprofiler_plugins: None) -> Iterator[SessionManager]:
    """The process-wide manager CellProfiler code uses (demo), with empty caches."""
    from cellprofiler_omero.cp_integration import compat
    from cellprofiler_omero.cp_integration import reader as reader_module

    compat.install()
    mgr = SessionManager(settings_for(reader__cache_mib=64))
    run(lambda: mgr.connect(user="demo", password="demo"))
    core_session.set_manager(mgr)
    reader_module._shared.metas.clear()
    reader_module._shared.stats = reader_module.ReadAheadStats()
    yield mgr
    core_session.set_manager(None)
    run(mgr.close)


def pipeline_over(ids: list[int], tmp_path: Path) -> Any:
    """Images (planes extracted) → Metadata → NamesAndTypes (C0 = DNA) →
    MeasureImageIntensity, loaded from ``.cppipe`` text with a file list of ``ids``."""
    from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
    from cellprofiler_core.modules import namesandtypes as nt
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.metadata import Metadata
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    modules: list[Any] = [Images(), Metadata(), nt.NamesAndTypes(), MeasureImageIntensity()]
    for number, module in enumerate(modules, start=1):
        module.set_module_num(number)
        pipeline.add_module(module)
    images, _, names, intensity = modules
    images.filter_choice.value = "No filtering"
    images.want_split.value = True
    names.assignment_method.value = nt.ASSIGN_RULES
    names.assignments[0].rule_filter.value = 'and (metadata does C "0")'
    names.assignments[0].image_name.value = "DNA"
    intensity.images_list.value = "DNA"
    text = io.StringIO()
    pipeline.dump(text)
    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(text.getvalue()), raise_on_error=True)
    list_file = tmp_path / "files.txt"
    list_file.write_text("".join(f"omero:iid={i}\n" for i in ids))
    pipeline.read_file_list(str(list_file))
    return pipeline


def session_calls(emulator: Emulator, mgr: SessionManager) -> dict[str, int]:
    return emulator.call_counts(run(mgr.connection).session_key, reset=True)


def test_preparing_a_run_makes_the_same_few_calls_for_any_number_of_images(
        manager: SessionManager, emulator: Emulator, seeded: dict[str, Any],
        tmp_path: Path) -> None:
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.workspace import Workspace

    # The fields, every pixel type, a Z-stack and an RGB image: twice as many images as
    # STARTUP_CALLS allows calls, so one call per image (a metadata look-up, a reader
    # or store opened per image) cannot stay under it.
    ids = [*seeded["fields"], *seeded["types"].values(), seeded["zstack"], seeded["rgb"]]
    assert len(ids) >= 2 * sum(STARTUP_CALLS.values())
    pipeline = pipeline_over(ids, tmp_path)
    m = Measurements()
    session_calls(emulator, manager)
    assert pipeline.prepare_run(Workspace(pipeline, None, None, None, m, ImageSetList()))
    calls = session_calls(emulator, manager)

    assert len(m.get_image_numbers()) >= len(ids)  # every image (a Z-stack: each plane)
    # Queries only (no store opened, no plane read), none repeated per image.
    assert set(calls) <= set(STARTUP_CALLS), calls
    for operation, most in STARTUP_CALLS.items():
        assert calls.get(operation, 0) <= most, calls


def test_an_in_process_run_starts_reading_the_first_image_set_as_it_is_prepared(
        manager: SessionManager, seeded: dict[str, Any], tmp_path: Path) -> None:
    from cellprofiler_omero.cp_integration.reader import _shared, read_ahead_stats

    ids = list(seeded["fields"][:3])
    pipeline = pipeline_over(ids, tmp_path)
    m = pipeline.run()  # CellProfiler's in-process run (headless ``cellprofiler -c -r``)

    assert list(m.get_image_numbers()) == [1, 2, 3]
    stats = read_ahead_stats()
    # Every image set's plane was started before CellProfiler asked for it — the first
    # one as the run was prepared, the others while the one before was processed —
    # and each was used once asked for.
    assert (stats.started, stats.used, stats.dropped) == (3, 3, 0)
    assert not _shared.speculative  # nothing left held


def test_a_headless_cellprofiler_run_handed_a_session_joins_it_while_loading_plugins(
        settings_for: Any, cellprofiler_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys
    import threading

    from cellprofiler_omero.cp_integration import session

    parent = SessionManager(settings_for())
    run(lambda: parent.connect(user="demo", password="demo"))
    previous = core_session._manager
    try:
        for key, value in parent.export_for_workers().items():
            monkeypatch.setenv(key, value)
        core_session.set_manager(None)
        # Not CellProfiler's command (a test run, a worker, a library): nothing joined.
        monkeypatch.setattr(sys, "argv", ["pytest"])
        assert not session.connect_early()
        assert core_session._manager is None

        monkeypatch.setattr(sys, "argv", ["/venv/lib/cellprofiler/__main__.py", "-c", "-r"])
        assert session.connect_early()
        mgr = core_session._manager
        assert mgr is not None
        joined = threading.Event()
        for _ in range(600):  # the join runs on its own; nothing here asks it to connect
            if mgr.connected:
                joined.set()
                break
            threading.Event().wait(0.05)
        assert joined.is_set(), "the handed-over session was not joined"
        assert run(mgr.connection).session_key == run(parent.connection).session_key
        run(mgr.close)
    finally:
        core_session.set_manager(previous)
        run(parent.close)

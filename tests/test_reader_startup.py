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
    forget_planes()
    core_session.set_manager(None)
    run(mgr.close)


def forget_planes() -> None:
    """Empty the readers' shared plane cache: a run's last images, which CellProfiler
    releases only when they are collected, would otherwise stay open and serve the next
    test's reads of those images from the cache."""
    import gc

    from cellprofiler_omero.cp_integration.reader import _shared

    gc.collect()  # CellProfiler's images release their readers in finalisers
    with _shared.lock:
        for key in list(_shared.planes):
            _shared._drop(key)
        _shared.current = _shared.upcoming = ()


@pytest.fixture
def handed_over(settings_for: Any, cellprofiler_plugins: None,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionManager]:
    """A session handed to this process as ``cellprofiler-omero`` hands one to CellProfiler
    (in the environment), no process-wide manager yet; yields the handing side's manager."""
    parent = SessionManager(settings_for())
    run(lambda: parent.connect(user="demo", password="demo"))
    previous = core_session._manager
    for key, value in parent.export_for_workers().items():
        monkeypatch.setenv(key, value)
    core_session.set_manager(None)
    yield parent
    forget_planes()
    core_session.set_manager(previous)
    run(parent.close)


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
        handed_over: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import threading

    from cellprofiler_omero.cp_integration import session

    parent = handed_over
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


def _cellprofiler_argv(file_list: Path) -> list[str]:
    """A headless ``python -m cellprofiler -c -r … --file-list FILE`` command line."""
    return ["/venv/lib/cellprofiler/__main__.py", "-c", "-r", "-p", "run.cppipe",
            "--file-list", str(file_list), "-o", "out"]


def test_a_headless_run_reads_its_file_lists_first_image_before_cellprofiler_asks_and_uses_it(
        handed_over: SessionManager, emulator: Emulator, seeded: dict[str, Any],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from cellprofiler_omero.core import refs
    from cellprofiler_omero.cp_integration import reader, session

    ids = list(seeded["fields"][:2])  # two-channel 512² uint16 fields: a tile a plane
    pipeline = pipeline_over(ids, tmp_path)  # writes tmp_path / "files.txt"
    first = min(ids, key=lambda i: f"omero:iid={i}")  # CellProfiler sorts its URLs
    parent = handed_over
    reader._shared.metas.clear()
    reader._shared.stats = reader.ReadAheadStats()
    argv = _cellprofiler_argv(tmp_path / "files.txt")
    monkeypatch.setattr(sys, "argv", argv)
    session_calls(emulator, parent)
    # What the reader plugin does as CellProfiler loads it.
    assert session.connect_early()
    warming = reader.warm_first_image(argv)
    assert warming is not None
    warming.join(60)
    mgr = session.manager()
    first_ref = refs.parse_image(f"omero:iid={first}")
    for future in reader._shared.planes[(first_ref, 0, 0, None)].values():
        future.result(60)
    # Before CellProfiler asked for anything: the file list's metadata in one batch
    # and both channels of its first image (z=0, t=0), held on speculation.
    calls = session_calls(emulator, parent)
    assert calls.get("RawPixelsStore.getTile") == 2, calls
    assert reader.read_ahead_stats().started == 2
    assert set(reader._shared.speculative.values()) == {first_ref}

    m = pipeline.run()  # CellProfiler's in-process run (headless ``cellprofiler -c -r``)

    assert list(m.get_image_numbers()) == [1, 2]
    calls = session_calls(emulator, parent)
    # No metadata asked again, the first image not read again: one tile for the
    # second image set's DNA plane is all the run read.
    assert calls.get("RawPixelsStore.getTile") == 1, calls
    assert "IQuery.projection" not in calls, calls
    stats = reader.read_ahead_stats()
    assert (stats.started, stats.used, stats.dropped) == (3, 3, 0)
    assert not reader._shared.speculative
    run(mgr.close)


def test_a_wrong_first_image_guess_is_dropped_and_freed_and_the_setting_turns_warming_off(
        manager: SessionManager, settings_for: Any, emulator: Emulator,
        seeded: dict[str, Any], tmp_path: Path) -> None:
    from cellprofiler_omero.core import refs
    from cellprofiler_omero.cp_integration import reader

    ids = sorted(seeded["fields"][:3], key=lambda i: f"omero:iid={i}")
    listed = tmp_path / "listed.txt"
    listed.write_text("".join(f"omero:iid={i}\n" for i in reversed(ids)))
    guess = refs.parse_image(f"omero:iid={ids[0]}")
    argv = _cellprofiler_argv(listed)

    # Off: nothing is started, nothing asked.
    off = SessionManager(settings_for(reader__warm_first_image=False))
    core_session.set_manager(off)
    session_calls(emulator, manager)
    assert reader.warm_first_image(argv) is None
    assert reader.read_ahead_stats().started == 0
    assert not session_calls(emulator, manager)
    core_session.set_manager(manager)

    warming = reader.warm_first_image(argv)
    assert warming is not None
    warming.join(60)
    assert reader.read_ahead_stats().started == 2  # the first listed (sorted) image
    assert reader._shared.held_bytes() > 0
    # The run's file list does not hold the guessed image: its first image set is another.
    m = pipeline_over(ids[1:], tmp_path).run()

    assert list(m.get_image_numbers()) == [1, 2]
    stats = reader.read_ahead_stats()
    assert stats.dropped == 2  # both channels of the guess, dropped unused
    assert stats.used == stats.started - 2
    assert not reader._shared.speculative
    assert not [key for key in reader._shared.planes if key[0] == guess]  # memory freed
    assert guess not in reader._shared.images  # its reader released

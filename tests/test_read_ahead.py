"""Reading through CellProfiler without a per-image tax: batched metadata, pooled stores,
the next image set read while the current one is processed, inside ``reader.cache_mib``.

A real CellProfiler pipeline (Images with planes extracted → Metadata → NamesAndTypes
(C0 = DNA, C1 = Cyto) → MeasureImageIntensity) runs image set by image set as an
analysis worker runs it, against the shared emulator's three two-channel fields; the
emulator counts the Ice calls of the session.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import TEST_SEED, run

pytestmark = pytest.mark.cellprofiler

#: Ice calls a first read of an image set's image may make once its metadata is cached
#: and the connection's store pool is warm: per channel plane, one ``setPixelsId`` (a
#: pooled store moves to the image) and one ``getTile`` per tile (one here: a 512² uint16
#: plane is under ``transfer.max_chunk_bytes``). No metadata query, no store opened or
#: closed.
FIRST_READ_CALLS = {"RawPixelsStore.setPixelsId": 2, "RawPixelsStore.getTile": 2}


def fields(index: int) -> np.ndarray:
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + index, TEST_SEED.field_size)
    return pixels


@pytest.fixture
def make_manager(settings_for: Any, cellprofiler_plugins: None
                 ) -> Iterator[Any]:
    """Makes the process-wide manager CellProfiler code uses (demo), closed afterwards."""
    from cellprofiler_omero.cp_integration import compat
    from cellprofiler_omero.cp_integration import reader as reader_module

    compat.install()
    made: list[SessionManager] = []

    def make(cache_mib: int) -> SessionManager:
        mgr = SessionManager(settings_for(reader__cache_mib=cache_mib))
        run(lambda: mgr.connect(user="demo", password="demo"))
        core_session.set_manager(mgr)
        made.append(mgr)
        reader_module._shared.metas.clear()
        reader_module._shared.stats = reader_module.ReadAheadStats()
        return mgr

    yield make
    core_session.set_manager(None)
    for mgr in made:
        run(mgr.close)


def prepared(ids: list[int], tmp_path: Path) -> tuple[Any, Any]:
    """The pipeline and its measurements after CellProfiler's own ``prepare_run``."""
    from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.modules import namesandtypes as nt
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.metadata import Metadata
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.workspace import Workspace

    pipeline = Pipeline()
    modules: list[Any] = [Images(), Metadata(), nt.NamesAndTypes(), MeasureImageIntensity()]
    for number, module in enumerate(modules, start=1):
        module.set_module_num(number)
        pipeline.add_module(module)
    images, _, names, intensity = modules
    images.filter_choice.value = "No filtering"
    images.want_split.value = True
    names.assignment_method.value = nt.ASSIGN_RULES
    names.add_assignment()
    for assignment, channel, name in zip(names.assignments, (0, 1), ("DNA", "Cyto"),
                                         strict=True):
        assignment.rule_filter.value = f'and (metadata does C "{channel}")'
        assignment.image_name.value = name
    names.matching_choice.value = nt.MATCH_BY_ORDER
    intensity.images_list.value = "DNA, Cyto"
    # Through .cppipe text, as CellProfiler loads a pipeline (settings take their form).
    text = io.StringIO()
    pipeline.dump(text)
    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(text.getvalue()), raise_on_error=True)
    list_file = tmp_path / "files.txt"
    list_file.write_text("".join(f"omero:iid={i}\n" for i in ids))
    pipeline.read_file_list(str(list_file))
    m = Measurements()
    assert pipeline.prepare_run(Workspace(pipeline, None, None, None, m, ImageSetList()))
    return pipeline, m


def run_image_set(pipeline: Any, m: Any, n: int) -> None:
    """One image set, as CellProfiler's analysis worker runs it (readers released after)."""
    pipeline.run_image_set(m, n, None, None, None)
    errors = [f for f in m.get_feature_names("Image") if f.startswith("ModuleError_")]
    assert not any(m["Image", f, n] for f in errors), errors


def ice_calls(emulator: Emulator, mgr: SessionManager) -> dict[str, int]:
    return emulator.call_counts(run(mgr.connection).session_key, reset=True)


def test_next_image_set_is_read_ahead_with_one_metadata_query_and_no_store_setup(
        make_manager: Any, emulator: Emulator, seeded: dict[str, Any], tmp_path: Path
) -> None:
    from cellprofiler_omero.cp_integration.reader import _shared, read_ahead_stats

    mgr = make_manager(64)
    ids = list(seeded["fields"][:3])
    ice_calls(emulator, mgr)
    pipeline, m = prepared(ids, tmp_path)
    numbers = list(m.get_image_numbers())
    assert len(numbers) == 3
    run_image_set(pipeline, m, numbers[0])
    warm = ice_calls(emulator, mgr)
    # Metadata of the file list: one batch of projections sent together (image, Pixels
    # and channel rows, plate positions) before plane extraction, never again per image
    # or image set; no loaded objects.
    assert warm.get("IQuery.findAllByQuery", 0) == 0
    assert warm.get("IQuery.findByQuery", 0) == 0
    assert warm.get("IQuery.projection", 0) <= 2

    for n in numbers[1:]:
        before = read_ahead_stats().started
        run_image_set(pipeline, m, n)
        calls = ice_calls(emulator, mgr)
        # The image set was read ahead: both channel planes started before it began.
        assert before >= 2 * (n - 1)
        # A first read of the image: no metadata query, no store opened or closed.
        assert not {k: v for k, v in calls.items() if k.startswith("IQuery.")}
        assert calls.get("ServiceFactory.createRawPixelsStore", 0) == 0
        assert calls.get("RawPixelsStore.close", 0) == 0
        for op, most in FIRST_READ_CALLS.items():
            assert calls.get(op, 0) <= most, (op, calls)

    stats = read_ahead_stats()
    # Image sets 2 and 3 were read ahead (2 planes each) and every plane was used.
    assert (stats.started, stats.used, stats.dropped) == (4, 4, 0)
    assert stats.peak_bytes <= 64 * 1024 * 1024
    # Pixel-identical to the images: CellProfiler's own measurement of what it read.
    for n, image_id in zip(numbers, ids, strict=True):
        index = seeded["fields"].index(image_id)
        for name, channel in (("DNA", 0), ("Cyto", 1)):
            expected = fields(index)[channel].astype(np.float64).sum() / 65535.0
            got = m["Image", f"Intensity_TotalIntensity_{name}", n]
            assert got == pytest.approx(expected, rel=1e-5)
    assert not _shared.speculative  # nothing left held

    # A wrong guess: image set 1 reads 2 ahead, then 3 runs; 2's planes are dropped.
    run_image_set(pipeline, m, numbers[0])
    run_image_set(pipeline, m, numbers[2])
    stats = read_ahead_stats()
    assert stats.dropped == 2 and not _shared.speculative
    assert not any(key[0].id == ids[1] for key in _shared.planes)


def test_read_ahead_stays_inside_the_memory_budget(make_manager: Any,
                                                   seeded: dict[str, Any],
                                                   tmp_path: Path) -> None:
    from cellprofiler_omero.cp_integration.reader import read_ahead_stats

    # One image set is 2 × 512² uint16 = 1 MiB: the next one never fits beside it.
    make_manager(1)
    pipeline, m = prepared(list(seeded["fields"][:3]), tmp_path)
    for n in m.get_image_numbers():
        run_image_set(pipeline, m, n)
    stats = read_ahead_stats()
    assert stats.started == 0 and stats.skipped >= 2
    assert 0 < stats.peak_bytes <= 1024 * 1024


def test_a_reader_released_by_a_finaliser_on_the_loop_thread_never_waits_for_the_lock(
) -> None:
    """CellProfiler's FileImage.__del__ closes readers wherever the garbage collector runs,
    also on the loop thread, while a CellProfiler thread may hold the read-ahead lock and
    wait for that loop (a deadlock a Dask worker hit): the release is handed on instead."""
    import threading

    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.refs import Kind, ObjectRef
    from cellprofiler_omero.cp_integration.reader import _shared

    ref = ObjectRef(Kind.IMAGE, 987654)
    _shared.images[ref] = (object(), 2)  # type: ignore[assignment]  # held twice
    returned = threading.Event()
    try:
        with _shared.lock:  # another thread's hold, as start_reads has it
            holder_waits = threading.Event()

            def on_loop() -> None:
                _shared.release(ref)
                returned.set()

            def hold() -> None:
                runtime.portal().call(on_loop)  # the loop runs the finaliser's release
                holder_waits.set()

            threading.Thread(target=hold, daemon=True).start()
            assert returned.wait(30), "the release on the loop thread waited for the lock"
            assert _shared.images[ref][1] == 2  # not yet: the lock is still held
        for _ in range(300):  # the handed-on release runs once the lock is free
            if _shared.images[ref][1] == 1:
                break
            threading.Event().wait(0.01)
        assert _shared.images[ref][1] == 1
    finally:
        _shared.images.pop(ref, None)

"""Uploads and reads under a real server's rules (issue 12 §2.1–2.4, §2.8).

The emulator refuses what a real OMERO.server refuses: writes through a store bound
after the pixel file exists, ``setPlane`` on pyramids, pyramids of types other than
uint8/uint16, and reads of a pyramid the server has not built yet. These tests drive
the product's own ``upload`` and ``ImageReader`` against it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import PlaneTooLarge, PyramidNotReady
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.uploading import PROVENANCE_NS, upload
from cellprofiler_omero.emulator import Emulator, SeedOptions
from cellprofiler_omero.transports.ice.uploader import abandoned_marker, marker
from tests.conftest import run

BIG = 4096  # over the test emulators' 2048² maximum plane
UPLOADER_LOG = "cellprofiler_omero.transports.ice.uploader"


def read(manager: SessionManager, image_id: int, **kw: Any) -> np.ndarray:
    reader = ImageReader(manager, parse_image(f"Image:{image_id}"))
    try:
        return run(lambda: reader.read(**kw))
    finally:
        run(reader.aclose)


def levels(manager: SessionManager, image_id: int) -> int:
    reader = ImageReader(manager, parse_image(f"Image:{image_id}"))
    try:
        return len(run(reader.metadata).levels)
    finally:
        run(reader.aclose)


def projection(manager: SessionManager, hql: str, **values: Any) -> list[Any]:
    """Rows of an HQL projection, asked through the manager's own omero-py session."""
    import omero.sys  # after the transport has loaded omero's model package
    from omero.rtypes import rstring, unwrap

    conn = run(manager.connection)
    p = omero.sys.ParametersI()
    for key, value in values.items():
        if isinstance(value, str):
            p.add(key, rstring(value))
        else:
            p.addLong(key, value)
    rows = conn.sf.getQueryService().projection(hql, p, {"omero.group": "-1"})
    return [[unwrap(v) for v in row] for row in rows]


def images_with_key(manager: SessionManager, key: str) -> list[int]:
    """Images whose provenance records this upload key (complete uploads)."""
    return [r[0] for r in projection(
        manager, "select l.parent.id from ImageAnnotationLink l join l.child a join "
        "a.mapValue mv where a.ns = :ns and mv.name = 'upload_key' and mv.value = :key",
        ns=PROVENANCE_NS, key=key)]


def images_described(manager: SessionManager, text: str) -> list[int]:
    return [r[0] for r in projection(
        manager, "select i.id from Image i where i.description like :text",
        text=f"%{text}%")]


def images_named(manager: SessionManager, name: str) -> list[int]:
    return [r[0] for r in projection(manager, "select i.id from Image i where i.name = :n",
                                     n=name)]


# -- resumed uploads ------------------------------------------------------------------------

def test_upload_killed_after_its_first_plane_is_retried_into_one_new_complete_image(
        manager: SessionManager, faults: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    key = "strict-killed-after-first-plane"
    array = np.random.default_rng(5).integers(0, 255, (4, 48, 40)).astype(np.uint8)
    # The second setPlane drops the connection: the first plane is on the server, so
    # the image's pixel file exists and no new store may write into it any more.
    faults.set_faults(drop_after=2, ops=["setPlane"])
    with caplog.at_level(logging.INFO, logger=UPLOADER_LOG):
        result = run(lambda: upload(manager, array, name="killed", axes="ZYX",
                                    client_key=key))
    faults.clear_faults()
    set_aside = [r for r in caplog.records if "setting aside image" in r.getMessage()]
    assert len(set_aside) == 1, "the dropped connection did not interrupt the upload"
    assert not result.reused
    assert images_with_key(manager, key) == [result.id]
    # The partial image was marked (never a candidate again), then deleted (Delete2).
    assert images_described(manager, marker(key)) == []
    assert images_described(manager, abandoned_marker(key)) == []
    assert images_named(manager, "killed (incomplete upload, safe to delete)") == []
    np.testing.assert_array_equal(read(manager, result.id, z=[0, 1, 2, 3])[:, 0], array)


def test_pyramid_upload_killed_mid_tiles_is_retried_into_a_new_pyramid(
        manager: SessionManager, faults: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    key = "strict-pyramid-killed"
    # 2100² is over the 2048² maximum plane: a pyramid, written by one locked writer.
    array = np.random.default_rng(6).integers(0, 255, (2100, 2100), dtype=np.uint8)
    faults.set_faults(drop_after=3, ops=["setTile"])
    with caplog.at_level(logging.INFO, logger=UPLOADER_LOG):
        result = run(lambda: upload(manager, array, name="killed pyramid", client_key=key))
    faults.clear_faults()
    assert [r for r in caplog.records if "setting aside image" in r.getMessage()]
    assert images_with_key(manager, key) == [result.id]
    assert images_described(manager, marker(key)) == []
    assert images_described(manager, abandoned_marker(key)) == []
    assert levels(manager, result.id) > 1
    np.testing.assert_array_equal(read(manager, result.id)[0, 0], array)


def test_parallel_plane_writes_go_through_stores_all_bound_before_the_first_write(
        settings_for: Any) -> None:
    # Four stores for 32 planes: a store bound after the first write could not write.
    mgr = SessionManager(settings_for(ice__stores_per_image=4))
    run(lambda: mgr.connect(user="demo", password="demo"))
    try:
        array = np.random.default_rng(7).integers(0, 2**16, (32, 64, 48)).astype(np.uint16)
        result = run(lambda: upload(mgr, array, name="parallel", axes="ZYX"))
        np.testing.assert_array_equal(read(mgr, result.id, z=list(range(32)))[:, 0], array)
    finally:
        run(mgr.close)


def test_a_retry_after_the_upload_completed_finds_it_and_records_provenance_once(
        manager: SessionManager) -> None:
    key = "strict-found-twice"
    array = np.arange(64, dtype=np.uint16).reshape(8, 8)
    first = run(lambda: upload(manager, array, name="twice", client_key=key,
                               source_image_ids=[1]))
    second = run(lambda: upload(manager, array, name="twice", client_key=key,
                                source_image_ids=[1]))
    assert second.id == first.id and second.reused and not first.reused
    annotations = projection(
        manager, "select l.child.id from ImageAnnotationLink l where l.parent.id = :id "
        "and l.child.ns = :ns", id=first.id, ns=PROVENANCE_NS)
    assert len(annotations) == 1


# -- large planes ---------------------------------------------------------------------------

def test_big_uint16_image_goes_up_as_a_pyramid_in_tiles_and_reads_back_once_built(
        manager: SessionManager) -> None:
    array = np.random.default_rng(11).integers(0, 2**16, (BIG, BIG), dtype=np.uint16)
    result = run(lambda: upload(manager, array, name="big uint16", client_key="strict-u16"))
    # Readable once the server has built the pyramid (the reader waits for it).
    assert levels(manager, result.id) > 1
    np.testing.assert_array_equal(read(manager, result.id)[0, 0], array)


def test_big_float32_image_is_exempt_and_goes_up_as_plain_planes(
        manager: SessionManager) -> None:
    array = np.random.default_rng(12).random((BIG, BIG), dtype=np.float32)
    result = run(lambda: upload(manager, array, name="big float32", client_key="strict-f32"))
    assert levels(manager, result.id) == 1
    np.testing.assert_array_equal(read(manager, result.id)[0, 0], array)


def test_big_int32_image_is_refused_before_anything_is_created(
        manager: SessionManager) -> None:
    array = np.ones((BIG, BIG), dtype=np.int32)
    with pytest.raises(PlaneTooLarge, match="2048×2048") as caught:
        run(lambda: upload(manager, array, name="big int32", client_key="strict-i32"))
    assert caught.value.max_plane == (2048, 2048)
    assert caught.value.size == (BIG, BIG) and caught.value.pixel_type == "int32"
    assert "float32" in str(caught.value)
    assert images_named(manager, "big int32") == []
    assert images_described(manager, "strict-i32") == []


# -- reading while the server builds the pyramid --------------------------------------------

@pytest.fixture(scope="module")
def slow_pyramids(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator whose pixel-data service takes 6 s to build a pyramid."""
    data = tmp_path_factory.mktemp("slow-pyramids")
    seed = SeedOptions(seed=2, fields=1, field_size=64, large_size=64, plate_rows=1,
                       plate_columns=1, plate_fields=1, plate_field_size=32)
    with Emulator(data, seed_options=seed, pyramid_threshold=2048, server_config={
            "omero.pixeldata.emulator_pyramid_delay_ms": "6000"}) as emu:
        yield emu


def _manager(emu: Emulator, tmp_path: Path, **overrides: Any) -> SessionManager:
    settings = Settings().replace({
        "server.host": emu.host, "server.port": emu.port,
        "auth.token_dir": str(tmp_path / "tokens"), "auth.keepalive_seconds": 3600,
        **overrides})
    mgr = SessionManager(settings)
    run(lambda: mgr.connect(user="demo", password="demo"))
    return mgr


def test_reading_a_pyramid_still_being_built_fails_clearly_then_waits_and_succeeds(
        slow_pyramids: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    impatient = _manager(slow_pyramids, tmp_path, **{"ice.pyramid_wait_seconds": 0.5})
    patient = _manager(slow_pyramids, tmp_path)
    try:
        array = np.random.default_rng(13).integers(0, 255, (BIG, BIG), dtype=np.uint8)
        result = run(lambda: upload(impatient, array, name="fresh pyramid"))
        with pytest.raises(PyramidNotReady, match="Try again later") as caught:
            read(impatient, result.id, region=None)
        assert caught.value.image_id == result.id
        assert caught.value.retry_after > 0
        # The default wait covers the build: the same read waits, then succeeds.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cellprofiler_omero.transports.ice.errors"):
            np.testing.assert_array_equal(read(patient, result.id)[0, 0], array)
        assert any("pyramid not ready" in r.getMessage() for r in caplog.records)
    finally:
        run(impatient.close)
        run(patient.close)


# -- the emulator's Delete2, through OMERO's own client ---------------------------------------

def test_blitzgateway_deletes_an_image_with_delete2(manager: SessionManager, blitz: Any
                                                    ) -> None:
    made = run(lambda: upload(manager, np.ones((4, 4), np.uint8), name="to delete"))
    conn = blitz()
    conn.deleteObjects("Image", [made.id], wait=True)
    assert conn.getObject("Image", made.id) is None
    assert images_named(manager, "to delete") == []


def test_delete2_of_another_users_image_answers_a_graph_exception(
        manager: SessionManager, blitz: Any, seeded: dict[str, Any]) -> None:
    import omero.cmd

    made = run(lambda: upload(manager, np.ones((4, 4), np.uint8), name="not yours"))
    other = blitz("other")
    with pytest.raises(omero.CmdError) as caught:
        other.deleteObjects("Image", [made.id], wait=True)
    assert isinstance(caught.value.err, omero.cmd.GraphException)
    assert f"Image[{made.id}]" in caught.value.err.message
    assert images_named(manager, "not yours") == [made.id]

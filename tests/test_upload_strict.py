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
    # The partial image is gone, or renamed and re-marked so that it is never a candidate.
    assert images_described(manager, marker(key)) == []
    leftovers = images_described(manager, abandoned_marker(key))
    assert result.id not in leftovers and len(leftovers) <= 1
    for image_id in leftovers:
        assert projection(manager, "select i.name from Image i where i.id = :id",
                          id=image_id)[0][0] == "killed (incomplete upload, safe to delete)"
    np.testing.assert_array_equal(read(manager, result.id, z=[0, 1, 2, 3])[:, 0], array)


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
        slow_pyramids: Emulator, tmp_path: Path) -> None:
    impatient = _manager(slow_pyramids, tmp_path, **{"ice.pyramid_wait_seconds": 0.5})
    patient = _manager(slow_pyramids, tmp_path)
    try:
        array = np.random.default_rng(13).integers(0, 255, (BIG, BIG), dtype=np.uint8)
        result = run(lambda: upload(impatient, array, name="fresh pyramid"))
        with pytest.raises(PyramidNotReady, match="Try again later") as caught:
            read(impatient, result.id, region=None)
        assert caught.value.image_id == result.id
        assert caught.value.retry_after > 0
        # The default wait covers the build: the same read then succeeds.
        np.testing.assert_array_equal(read(patient, result.id)[0, 0], array)
    finally:
        run(impatient.close)
        run(patient.close)

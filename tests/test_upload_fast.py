"""Uploads with few round trips, off the pipeline's critical path (issue 17 §3).

Round trips are counted by the emulator (``Emulator.call_counts``, per session) and
compared with the numbers ARCHITECTURE.md documents and with omero-py's own
``createImageFromNumpySeq`` on the same server. The background queue that
SaveImagesToOMERO uploads through is driven with real uploads and a real injected
fault; exactly-once is checked after killing a process in the middle of an upload.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.errors import UploadInterrupted
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.uploading import begin_upload, upload
from cellprofiler_omero.cp_integration.save_images import UploadFailed, UploadQueue
from cellprofiler_omero.emulator import Emulator
from cellprofiler_omero.transports.ice.uploader import PIECE_BYTES, stores_for
from tests.conftest import run
from tests.test_upload_strict import images_described, images_with_key, read

UPLOADER_LOG = "cellprofiler_omero.transports.ice.uploader"


def documented_calls(pieces: int, stores: int) -> int:
    """ARCHITECTURE.md ▸ "Writes: exactly once": a new image on a connection that has
    uploaded before: 2 look-ups, createImage, the Pixels id, the image fetched (while
    the planes travel), per store createRawPixelsStore + setPixelsId + close, one call
    per piece, one saveArray."""
    return 6 + 3 * stores + pieces


def session_calls(emulator: Emulator, key: str) -> dict[str, int]:
    return emulator.call_counts(key)


def blitz_upload(conn: Any, pixels: np.ndarray) -> None:
    """omero-py's way: planes in its Z, C, T order."""
    size_z, size_c = pixels.shape[:2]
    planes = (pixels[z, c] for z in range(size_z) for c in range(size_c))
    assert conn.createImageFromNumpySeq(planes, "blitz upload", sizeZ=size_z, sizeC=size_c,
                                        sizeT=1) is not None


def test_an_upload_makes_the_documented_calls_at_most_two_more_than_omero_py_and_writes_planes_through_several_stores(  # noqa: E501
        emulator: Emulator, settings_for: Any, blitz: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    one_store = SessionManager(settings_for(ice__stores_per_image=1))
    four_stores = SessionManager(settings_for(ice__stores_per_image=4))
    for mgr in (one_store, four_stores):
        run(lambda mgr=mgr: mgr.connect(user="demo", password="demo"))
    conn = blitz()
    try:
        ours_one = run(one_store.connection).session_key
        ours_four = run(four_stores.connection).session_key
        theirs = conn.c.getSessionId()
        rng = np.random.default_rng(17)
        # What each connection asks once (plane limits, pixel types, service proxies).
        warm = rng.integers(0, 2**16, (1, 1, 8, 8), dtype=np.uint16)
        for mgr in (one_store, four_stores):
            run(lambda mgr=mgr: upload(mgr, warm, name="warm-up", axes="ZCYX"))
        blitz_upload(conn, warm)
        for shape in ((1, 3, 64, 48), (8, 2, 64, 48)):  # 2D, 3 channels; a Z-stack
            pixels = rng.integers(0, 2**16, shape, dtype=np.uint16)
            planes = shape[0] * shape[1]
            emulator.reset_call_counts()
            blitz_upload(conn, pixels)
            blitz_calls = sum(session_calls(emulator, theirs).values())
            emulator.reset_call_counts()
            run(lambda pixels=pixels: upload(one_store, pixels, name="counted", axes="ZCYX"))
            ours = session_calls(emulator, ours_one)
            assert sum(ours.values()) <= documented_calls(planes, 1), ours
            assert sum(ours.values()) <= blitz_calls + 2, (ours, blitz_calls)

            emulator.reset_call_counts()
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger=UPLOADER_LOG):
                made = run(lambda pixels=pixels: upload(four_stores, pixels, name="parallel",
                                                        axes="ZCYX"))
            ours = session_calls(emulator, ours_four)
            stores = stores_for(planes, 4)
            assert sum(ours.values()) <= documented_calls(planes, stores), ours
            # Every store was bound (and none replaced); with enough planes more than
            # one wrote them.
            assert ours["RawPixelsStore.setPixelsId"] == stores
            written = [r.pieces_per_store for r in caplog.records  # type: ignore[attr-defined]
                       if hasattr(r, "pieces_per_store")]
            assert len(written) == 1 and sum(written[0]) == planes
            assert sum(1 for n in written[0] if n) == stores
            assert stores == (1 if planes == 3 else 2)
            np.testing.assert_array_equal(
                read(four_stores, made.id, z=list(range(shape[0])), c=None), pixels)
    finally:
        for mgr in (one_store, four_stores):
            run(mgr.close)


def test_the_upload_queue_keeps_order_blocks_when_full_and_raises_a_failed_upload_at_the_next_save(
        manager: SessionManager, faults: Emulator) -> None:
    queue = UploadQueue(depth=1)
    done: list[int] = []
    gate = threading.Event()

    def job(n: int) -> Any:
        def finish() -> None:
            if n == 0:
                assert gate.wait(60)
            done.append(n)
        return finish

    queue.put(job(0), image_number=1, name="first", image_id=0)
    returned = threading.Event()
    waiting = threading.Thread(target=lambda: (queue.put(job(1), image_number=2,
                                                         name="second", image_id=0),
                                               returned.set()))
    waiting.start()
    # The queue holds one upload: the second save waits while the first is going up.
    assert not returned.wait(0.5)
    gate.set()
    assert returned.wait(60)
    queue.put(job(2), image_number=3, name="third", image_id=0)
    queue.drain()
    assert done == [0, 1, 2]

    # A real upload whose connection drops after its first plane reached the server.
    key = "fast-queue-interrupted"
    pixels = np.arange(3 * 24 * 16, dtype=np.uint16).reshape(3, 24, 16)
    pending = run(lambda: begin_upload(manager, pixels, name="interrupted", axes="ZYX",
                                       client_key=key))
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["setPlane"])
    queue.put(lambda: run(pending.finish), image_number=4, name="interrupted",
              image_id=pending.image.id)
    while queue.pending():
        time.sleep(0.05)
    faults.clear_faults()
    with pytest.raises(UploadFailed) as caught:
        queue.put(job(5), image_number=5, name="after", image_id=0)
    failed = caught.value
    assert (failed.image_number, failed.image_id) == (4, pending.image.id)
    assert isinstance(failed.cause, UploadInterrupted)
    assert failed.cause.image_id == pending.image.id
    assert "run the pipeline again" in str(failed)
    queue.drain()  # raised once, at the next save
    assert done == [0, 1, 2]
    # Running the same upload again makes the image once, under the same key.
    again = run(lambda: upload(manager, pixels, name="interrupted", axes="ZYX",
                               client_key=key))
    assert not again.reused and again.id != pending.image.id
    assert images_with_key(manager, key) == [again.id]


KILLED = """
import sys
import numpy as np
from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.uploading import begin_upload

host, port, key, tokens = sys.argv[1:5]
mgr = SessionManager(Settings().replace({
    "server.host": host, "server.port": int(port), "auth.token_dir": tokens,
    "auth.keepalive_seconds": 3600, "ice.stores_per_image": 1}))
runtime.run(lambda: mgr.connect(user="demo", password="demo"))
pixels = np.arange(4 * 32 * 24, dtype=np.uint16).reshape(4, 32, 24)
pending = runtime.run(lambda: begin_upload(mgr, pixels, name="killed mid-upload",
                                           axes="ZYX", client_key=key))
print(pending.image.id, flush=True)
runtime.run(pending.finish)
print("finished", flush=True)
"""


def test_a_queued_upload_cut_off_mid_pixels_is_made_again_and_the_new_id_patched_in(
        manager: SessionManager, faults: Emulator) -> None:
    """With ``redo`` (as SaveImagesToOMERO queues it), a write the server cut off after
    its first plane is no failure: the upload runs again under its key (the incomplete
    image set aside), and the pipeline's thread learns the new id at the next save."""
    queue = UploadQueue(depth=1)
    key = "fast-queue-redone"
    pixels = np.arange(3 * 24 * 16, dtype=np.uint16).reshape(3, 24, 16)
    pending = run(lambda: begin_upload(manager, pixels, name="redone", axes="ZYX",
                                       client_key=key))
    patched: list[int] = []
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["setPlane"])
    queue.put(lambda: run(pending.finish), image_number=1, name="redone",
              image_id=pending.image.id,
              redo=lambda: run(lambda: upload(manager, pixels, name="redone", axes="ZYX",
                                              client_key=key)),
              patch=patched.append)
    while queue.pending():
        time.sleep(0.05)
    faults.clear_faults()
    queue.drain()  # no failure: the image was made again
    # A new id proves the drop fired: only a cut-off write makes the image again.
    assert len(patched) == 1 and patched[0] != pending.image.id
    assert images_with_key(manager, key) == patched
    np.testing.assert_array_equal(read(manager, patched[0], z=[0, 1, 2], c=None)[:, 0], pixels)


def test_an_upload_killed_mid_pixels_is_made_once_when_run_again(
        emulator: Emulator, faults: Emulator, manager: SessionManager,
        tmp_path: Path) -> None:
    key = "fast-killed-mid-pixels"
    # Each plane takes the server 3 s: the process is killed while its pixels go up.
    faults.set_faults(latency_ms=3000, ops=["setPlane"])
    emulator.reset_call_counts()
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, emulator.host, str(emulator.port), key,
         str(tmp_path / "tokens")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        began = int(child.stdout.readline())
        deadline = time.monotonic() + 60
        while not emulator.call_counts().get("RawPixelsStore.setPlane"):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    faults.clear_faults()
    assert images_described(manager, f"upload {key}]") == [began]  # left marked incomplete
    pixels = np.arange(4 * 32 * 24, dtype=np.uint16).reshape(4, 32, 24)
    again = run(lambda: upload(manager, pixels, name="killed mid-upload", axes="ZYX",
                               client_key=key))
    assert not again.reused and again.id != began
    assert images_with_key(manager, key) == [again.id]
    assert images_described(manager, f"upload {key}]") == []
    np.testing.assert_array_equal(read(manager, again.id, z=[0, 1, 2, 3])[:, 0], pixels)


def test_a_staged_upload_whose_completing_reply_was_lost_completes_once(
        emulator: Emulator, faults: Emulator, manager: SessionManager) -> None:
    key = "fast-completing-reply-lost"
    pixels = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    pending = run(lambda: begin_upload(manager, pixels, name="reply lost", axes="ZYX",
                                       client_key=key))
    session = run(manager.connection).session_key
    # The server saves the completing update, then the connection drops before its reply.
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["saveArray"])
    emulator.reset_call_counts()
    done = run(pending.finish)
    faults.clear_faults()
    counts = emulator.call_counts(session)
    # The retry found the completed image (one look-up, after the first attempt's Pixels
    # id) instead of failing or writing again.
    assert counts.get("IQuery.projection") == 2 and counts["IUpdate.saveArray"] == 1
    assert done.id == pending.image.id and not done.reused
    assert images_with_key(manager, key) == [done.id]


def test_big_images_get_a_store_per_12_mib_and_small_ones_share_few() -> None:
    plane_2048 = 2048 * 2048 * 2
    # Three 8 MiB planes in 4 MiB pieces: two stores, so one piece is stored while the
    # next travels (a third would cost three calls and a close for nothing).
    assert stores_for(6, 4, nbytes=3 * plane_2048) == 2
    # Anything over 12 MiB has two (two planes: 4 pieces), one 8 MiB plane one.
    assert stores_for(4, 4, nbytes=2 * plane_2048) == 2
    assert stores_for(2, 4, nbytes=plane_2048) == 1
    # Never more stores than pieces or than ice.stores_per_image.
    assert stores_for(2, 4, nbytes=10 * plane_2048) == 2
    assert stores_for(64, 4, nbytes=64 * plane_2048) == 4
    # Small planes: one store per PIECES_PER_STORE pieces, at least one.
    assert stores_for(3, 4, nbytes=3 * 64 * 48 * 2) == 1
    assert stores_for(16, 4, nbytes=16 * 64 * 48 * 2) == 2


def test_an_upload_sends_pieces_of_at_most_4_mib_and_a_staged_one_whole_planes(
        emulator: Emulator, manager: SessionManager) -> None:
    """In the foreground a piece is stored only once all of it has arrived, so smaller
    pieces shorten the tail; behind the pipeline every call in sequence may wait behind
    read data, so whole planes (fewest calls) go."""
    pixels = np.random.default_rng(5).integers(0, 2**16, (1, 1536, 1536), dtype=np.uint16)
    assert pixels.nbytes > PIECE_BYTES
    session = run(manager.connection).session_key
    run(lambda: upload(manager, pixels[:, :8, :8], name="warm-up", axes="ZYX"))
    emulator.reset_call_counts()
    made = run(lambda: upload(manager, pixels, name="foreground", axes="ZYX"))
    foreground = session_calls(emulator, session)
    # Two full-row strips (1,365 and 171 rows of 3,072 bytes), through one store.
    assert foreground.get("RawPixelsStore.setTile") == 2
    assert "RawPixelsStore.setPlane" not in foreground
    assert foreground["RawPixelsStore.setPixelsId"] == 1
    np.testing.assert_array_equal(read(manager, made.id, z=[0])[:, 0], pixels)
    emulator.reset_call_counts()
    pending = run(lambda: begin_upload(manager, pixels, name="behind", axes="ZYX"))
    done = run(pending.finish)
    behind = session_calls(emulator, session)
    assert behind.get("RawPixelsStore.setPlane") == 1 and "RawPixelsStore.setTile" not in behind
    np.testing.assert_array_equal(read(manager, done.id, z=[0])[:, 0], pixels)

"""OMEROReader: CellProfiler 5's reader for OMERO image references.

Contract (CellProfiler 5 main):

* ``supports_format`` claims every image reference ``core.refs`` understands
  (``omero:iid=N``, OMERO.web links, ``Image:N`` …) with score 1 and nothing else.
* ``read`` returns raw values in the image's own dtype (``bit`` images as uint8 0/1):
  ``(Y, X)`` for one channel, ``(Y, X, C)`` when ``c`` is ``None`` and there are
  several channels. ``index`` addresses planes in OMERO's XYZCT order, z fastest:
  ``index = z + size_z * (c + size_c * t)`` — what ``ObjectsImage`` iterates for
  label images. ``xywh`` reads a region. With ``wants_metadata_rescale`` the
  answer is ``(array, (min, max))`` from the pixel type's range (``None`` for
  floating point). Out-of-range series, c, z, t or index raise ``IndexError``.
* ``read_volume`` returns ``(Z, Y, X)`` or ``(Z, Y, X, C)``.
* ``get_series_metadata`` gives one series with the image's sizes and name.

Planes are shared by every reader of the same image in the process: when one
channel of a plane is asked for, every channel of that plane is fetched at once
in the background (read-ahead, bounded by ``reader.cache_mib``), so the other
channels of the image set are already on their way.

No per-image tax (CellProfiler makes a reader per image per image set):

* metadata comes from a process-wide ``MetadataCache``, filled in batches when
  Images and NamesAndTypes prepare the run (the file list's OMERO images) and, in
  analysis workers, for a window of upcoming image sets (``announce_image_set``);
  it serves only the session that fetched it;
* the Ice transport's stores stay with the connection and move between images;
* the next image set's planes are read while CellProfiler computes the current one,
  and in a run CellProfiler makes in this process the first image set's as soon as
  NamesAndTypes has made the image sets (``start_first_image_set``); a headless
  ``cellprofiler -c -r --file-list FILE`` run handed a session starts even earlier,
  on the file list's first image, as the reader plugin loads (``warm_first_image``).
  How the reader knows the next image set: NamesAndTypes stores every image set in
  the measurements (``ImageSet_ImageSet``, by image number) and its ``run`` is
  where each image set starts; ``compat`` calls ``announce_image_set`` just before
  it (its ``run`` may read planes already), which decodes image sets N and N+1 the way
  NamesAndTypes does. CellProfiler runs image numbers in ascending order (per group);
  when N+1 is not the next one run (another worker runs it), the planes read for it
  are dropped unused when the next image set is announced, or pushed out by the
  ``reader.cache_mib`` budget. LoadData pipelines are not announced (no read-ahead
  of the next image set); ``image_set_starting`` is the call for such callers.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cellprofiler_core.constants.image import (
    MD_SERIES_NAME,
    MD_SIZE_C,
    MD_SIZE_S,
    MD_SIZE_T,
    MD_SIZE_X,
    MD_SIZE_Y,
    MD_SIZE_Z,
)
from cellprofiler_core.reader import Reader

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.model import ImageMeta, PixelType, Region
from cellprofiler_omero.core.reading import ImageReader, MetadataCache
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.cp_integration import compat, session

log = logging.getLogger(__name__)

PlaneKey = tuple[Any, ...]


@dataclass(frozen=True)
class PlannedPlane:
    """A plane CellProfiler will ask an OMERO image for, as NamesAndTypes names it."""

    ref: ObjectRef
    index: int | None = None
    c: int | None = None
    z: int | None = None
    t: int | None = None


@dataclass
class ReadAheadStats:
    """What read-ahead did (process-wide; tests and the benchmark read it)."""

    #: Channel planes started for an image set before CellProfiler asked for them.
    started: int = 0
    #: Of those, asked for by CellProfiler.
    used: int = 0
    #: Of those, dropped unused (a wrong guess, or pushed out by the budget).
    dropped: int = 0
    #: Image sets not read ahead because they did not fit the budget.
    skipped: int = 0
    #: Most bytes the plane cache held at once.
    peak_bytes: int = 0


class _Shared:
    """Image readers and read-ahead planes shared by all OMEROReader instances."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.images: dict[ObjectRef, tuple[ImageReader, int]] = {}
        self.planes: OrderedDict[PlaneKey, dict[int, Future[np.ndarray]]] = OrderedDict()
        self.plane_bytes: dict[PlaneKey, int] = {}
        self.metas = MetadataCache()
        #: (manager, server, user) the cached metadata was fetched for.
        self.metas_owner: tuple[int, str, int] | None = None
        self.stats = ReadAheadStats()
        #: Planes read ahead for an image set and not asked for yet; each holds its
        #: image's reader (``acquire``) until it is used or dropped.
        self.speculative: dict[PlaneKey, ObjectRef] = {}
        #: The announced image set: its planes, the next one's, and whether reading
        #: ahead has started (on its first plane request).
        self.current: tuple[PlannedPlane, ...] = ()
        self.upcoming: tuple[PlannedPlane, ...] = ()
        self.launched = True
        self._executor: ThreadPoolExecutor | None = None
        #: Set once the start-up warm (``warm_first_image``) has fetched the file list's
        #: metadata (or given up): ``prefetch`` waits for it rather than ask twice.
        self.warmed_metas: threading.Event | None = None

    def acquire(self, ref: ObjectRef) -> ImageReader:
        with self.lock:
            reader, count = self.images.get(ref, (None, 0))
            manager = session.manager()
            if reader is not None and reader.manager is not manager:
                # Still open under a manager that was replaced (a reader CellProfiler
                # has not released yet): its planes and session are stale.
                for key in [k for k in self.planes if k[0] == ref]:
                    self._drop(key)
                reader = None
            if reader is None:
                reader = ImageReader(manager, ref, self.cached_meta(ref))
            self.images[ref] = (reader, count + 1)
            return reader

    def release(self, ref: ObjectRef, *, wait: bool = True) -> None:
        if runtime.in_loop_thread():
            # CellProfiler releases images from finalisers (FileImage.__del__), which the
            # garbage collector may run on the loop thread while another thread holds the
            # lock and waits for the loop (start_reads): blocking here would deadlock both.
            if not self.lock.acquire(blocking=False):
                threading.Thread(target=self.release, args=(ref,), kwargs={"wait": False},
                                 name="omero-reader-release", daemon=True).start()
                return
        else:
            self.lock.acquire()
        try:
            reader, count = self.images.get(ref, (None, 0))
            if reader is None:
                return
            if count > 1:
                self.images[ref] = (reader, count - 1)
                return
            del self.images[ref]
            for key in [k for k in self.planes if k[0] == ref]:
                self._drop(key)
        finally:
            self.lock.release()
        portal = runtime.running()
        if portal is None:
            return  # nothing was ever read through the loop, so nothing is open
        try:
            if wait and not runtime.in_loop_thread():
                portal.call(reader.aclose)
            else:
                portal.start_task_soon(reader.aclose)
        except Exception as exc:  # closing must never fail a pipeline
            log.debug("closing image reader failed: %s", exc)

    def _drop(self, key: PlaneKey) -> None:
        futures = self.planes.pop(key, None)
        self.plane_bytes.pop(key, None)
        ref = self.speculative.pop(key, None)
        if ref is not None:  # read ahead and never asked for
            self.stats.dropped += len(futures or ())
            for future in (futures or {}).values():
                future.cancel()
            self.release(ref, wait=False)

    def _owner(self) -> tuple[int, str, int] | None:
        mgr = session.manager()
        info = mgr.info if mgr.connected else None
        return None if info is None else (id(mgr), str(info.server), info.user_id)

    def cached_meta(self, ref: ObjectRef) -> ImageMeta | None:
        """Cached metadata, only for the session that fetched it: another user (or no
        session at all) must ask the server, which decides what they may see."""
        owner = self._owner()
        if owner is None or owner != self.metas_owner:
            return None
        return self.metas.get(ref)

    def claim_metas(self) -> None:
        """Metadata is about to be cached for the current session: forget another's."""
        owner = self._owner()
        if owner != self.metas_owner:
            self.metas.clear()
            self.metas_owner = owner

    def budget_bytes(self) -> int:
        return int(session.manager().settings.reader.cache_mib) * 1024 * 1024

    def held_bytes(self) -> int:
        with self.lock:
            return sum(self.plane_bytes.values())

    def remember(self, key: PlaneKey, futures: dict[int, Future[np.ndarray]], size: int
                 ) -> None:
        with self.lock:
            self.planes[key] = futures
            self.plane_bytes[key] = size
            budget = self.budget_bytes()
            while len(self.planes) > 1 and sum(self.plane_bytes.values()) > budget:
                oldest = next(iter(self.planes))
                self._drop(oldest)
            self.stats.peak_bytes = max(self.stats.peak_bytes, sum(self.plane_bytes.values()))

    def claim(self, key: PlaneKey) -> None:
        """CellProfiler asked for a plane read ahead: it is no longer speculative."""
        with self.lock:
            ref = self.speculative.pop(key, None)
            if ref is not None:
                self.stats.used += len(self.planes.get(key) or ())
                self.release(ref, wait=False)

    # -- image sets ------------------------------------------------------------------------

    def announce(self, current: Sequence[PlannedPlane], upcoming: Sequence[PlannedPlane],
                 window: Callable[[], Iterable[ObjectRef]]) -> None:
        """Image set ``current`` starts; ``upcoming`` is the one expected next.

        Planes read ahead for images not in ``current`` were a wrong guess: dropped.
        Metadata missing from the cache is fetched for ``window()``'s images at once.
        """
        # Planes read for the upcoming image set are still a right guess (they were
        # started early when this image set was announced as the run was prepared).
        refs = {p.ref for p in (*current, *upcoming)}
        with self.lock:
            if (tuple(current), tuple(upcoming)) == (self.current, self.upcoming):
                return  # announced already (as the run was prepared): reads are under way
            for key in [k for k, ref in self.speculative.items() if ref not in refs]:
                self._drop(key)
            self.current, self.upcoming = tuple(current), tuple(upcoming)
            self.launched = not session.manager().settings.reader.readahead
        wanted = [p.ref for p in (*current, *upcoming)]
        if any(self.cached_meta(ref) is None for ref in wanted):
            prefetch([*wanted, *window()])

    def launch(self, ref: ObjectRef) -> None:
        """On the first plane request of the announced image set: start every plane of
        it, and once they are in, the next image set's (within the budget)."""
        with self.lock:
            if self.launched or ref not in {p.ref for p in self.current}:
                return
            self.launched = True
            current, upcoming = self.current, self.upcoming
        futures = [f for plane in current for f in self.start(plane)]
        if upcoming:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="omero-readahead")
            self._executor.submit(self._after, futures, upcoming)

    def _after(self, futures: list[Future[np.ndarray]], upcoming: Sequence[PlannedPlane]
               ) -> None:
        wait_all(futures)
        try:
            metas = [self.cached_meta(p.ref) for p in upcoming]
            if any(m is None for m in metas):
                return  # not prefetched (an error was logged): read when asked
            size = sum(_plane_bytes(m, p) for p, m in zip(upcoming, metas, strict=True)
                       if m is not None)
            with self.lock:
                if self.upcoming is not upcoming:
                    return  # the next image set has started already
                if self.held_bytes() + size > self.budget_bytes():
                    self.stats.skipped += 1
                    return
                for plane in upcoming:
                    self.start(plane, speculative=True)
        except Exception as exc:  # reading ahead must never fail a pipeline
            log.debug("reading ahead failed: %s", exc)

    def start(self, plane: PlannedPlane, *, speculative: bool = False
              ) -> list[Future[np.ndarray]]:
        """Start reading ``plane`` (every channel when its channel is not given)."""
        meta = self.cached_meta(plane.ref)
        if meta is None:
            return []
        if plane.index is not None:
            z, c, t = _zct(meta, plane.index)
            channels: Sequence[int] = (c,)
        else:
            z, t = plane.z or 0, plane.t or 0
            channels = range(meta.size_c) if plane.c is None else (plane.c,)
        if not (0 <= z < meta.size_z and 0 <= t < meta.size_t) or any(
                not 0 <= c < meta.size_c for c in channels):
            return []
        key: PlaneKey = (plane.ref, z, t, None)
        with self.lock:
            existing = self.planes.get(key)
            if existing is not None:
                if all(c in existing for c in channels):
                    return [existing[c] for c in channels]
                speculative = key in self.speculative
            # An image no OMEROReader has opened yet is read on speculation: its
            # reader is held until CellProfiler asks for the plane or it is dropped.
            reader = self.images.get(plane.ref, (None, 0))[0]
            speculative = speculative or reader is None
            if speculative:
                reader = self.acquire(plane.ref)
            assert reader is not None
            futures = dict(existing or {})
            start_reads(reader, meta, z, t, None, channels, futures)
            if speculative:
                if key in self.speculative:
                    self.release(plane.ref, wait=False)  # one hold per plane key
                self.speculative[key] = plane.ref
                self.stats.started += len(futures) - len(existing or ())
            self.remember(key, futures, len(futures) * meta.size_x * meta.size_y
                          * meta.pixel_type.bytes_per_pixel)
            return [futures[c] for c in channels]


def prefetch(wanted: Sequence[ObjectRef]) -> None:
    """Cache the metadata of ``wanted`` in batched queries (connecting if needed, and
    then handing the session to workers as a first read does)."""
    warming = _shared.warmed_metas
    if warming is not None:
        warming.wait()  # the start-up warm's batch holds these images: no second one
    mgr = session.manager()
    was_connected = mgr.connected
    if not was_connected:
        runtime.run(mgr.connect)  # as a first read would (AuthError without a login)
        session.after_connect(mgr)
    _shared.claim_metas()
    runtime.run(_shared.metas.prefetch, mgr, wanted)


def _zct(meta: ImageMeta, index: int) -> tuple[int, int, int]:
    return (index % meta.size_z, (index // meta.size_z) % meta.size_c,
            index // (meta.size_z * meta.size_c))


def _plane_bytes(meta: ImageMeta, plane: PlannedPlane) -> int:
    channels = meta.size_c if plane.c is None and plane.index is None else 1
    return channels * meta.size_x * meta.size_y * meta.pixel_type.bytes_per_pixel


def start_reads(reader: ImageReader, meta: ImageMeta, z: int, t: int, region: Region | None,
                channels: Iterable[int], futures: dict[int, Future[np.ndarray]]
                ) -> dict[int, Future[np.ndarray]]:
    """Start a read of each of ``channels`` not in ``futures`` (one task per channel)."""
    portal = runtime.portal()
    for c in channels:
        if c not in futures:
            futures[c] = portal.start_task_soon(
                functools.partial(reader.read, z=(z,), c=(c,), t=t, region=region))
    return futures


_shared = _Shared()

#: Image sets whose metadata an analysis worker fetches at once when it meets an image
#: set whose images are not cached (one batched query for this many image sets).
METADATA_WINDOW = 64


def _planned(image_set: dict[str, Any]) -> list[PlannedPlane]:
    """The OMERO planes of one NamesAndTypes image set (name -> ImagePlane)."""
    out = []
    for plane in image_set.values():
        url = getattr(plane, "url", None)
        if not isinstance(url, str) or not refs.is_image_reference(url):
            continue
        out.append(PlannedPlane(refs.parse_image(url), plane.index, plane.channel, plane.z,
                                plane.t))
    return out


def _image_set(module: Any, workspace: Any, n: int) -> list[PlannedPlane]:
    """The OMERO planes of image set ``n`` as NamesAndTypes stored it in the measurements
    (``ImageSet_ImageSet``), decoded as its ``get_imageset`` decodes it."""
    from cellprofiler_core.constants.modules.namesandtypes import M_IMAGE_SET

    m = workspace.measurements
    if not m.has_measurements("Image", M_IMAGE_SET, n):
        return []
    raw = m.get_measurement("Image", M_IMAGE_SET, n)
    compressed = ast.literal_eval(raw) if isinstance(raw, str) else raw
    return _planned(module.decompress_imageset(workspace, compressed))


def announce_image_set(module: Any, workspace: Any) -> None:
    """NamesAndTypes has started an image set: prepare reading it and the next one.

    ``module`` is the NamesAndTypes module; image sets are read from the measurements
    as its ``get_imageset`` reads them. Never raises: reading ahead is an optimisation.
    """
    try:
        m = workspace.measurements
        number = int(m.image_set_number)

        def image_set(n: int) -> list[PlannedPlane]:
            return _image_set(module, workspace, n)

        def window() -> list[ObjectRef]:
            return [p.ref for n in range(number + 2, number + METADATA_WINDOW)
                    for p in image_set(n)]

        current = image_set(number)
        if current:
            _shared.announce(current, image_set(number + 1), window)
    except Exception as exc:
        log.debug("image set not announced to the OMERO reader: %s", exc)


def prefetch_file_list(workspace: Any) -> None:
    """Cache the metadata of the file list's OMERO images (batched queries), as
    Images and NamesAndTypes prepare the run. Never raises."""
    try:
        urls = [getattr(f, "url", f) for f in workspace.pipeline.file_list]
        wanted = [refs.parse_image(u) for u in urls
                  if isinstance(u, str) and refs.is_image_reference(u)]
        if wanted:
            prefetch(wanted)
    except Exception as exc:
        log.debug("file list metadata not prefetched: %s", exc)


def runs_image_sets_here() -> bool:
    """Whether this process runs the image sets it prepares: CellProfiler's in-process
    run (``Pipeline.run_with_yield``: headless ``cellprofiler -c -r``) prepares and runs
    in one call. CellProfiler's analysis workers and this
    package's Dask workers are handed the prepared run instead, so planes read where
    it was prepared would be read for nothing."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "run_with_yield" and "cellprofiler_core" in (
                frame.f_code.co_filename):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def start_first_image_set(workspace: Any) -> None:
    """The run's image sets are made (NamesAndTypes' ``prepare_run``): start reading the
    first one's OMERO planes now, and the second's once they are in (inside
    ``reader.cache_mib``), instead of when NamesAndTypes' ``run`` first asks for a plane.

    Over a slow network the first image set can overlap nothing else, so every moment
    between preparing the run and running its first image set counts. Only where the
    image sets are run in this process (``runs_image_sets_here``); a wrong guess (the
    run starts at another image set) is dropped when that image set is announced.
    Never raises.
    """
    try:
        if not runs_image_sets_here():
            return
        module = next((m for m in workspace.pipeline.modules()
                       if m.module_name == "NamesAndTypes"), None)
        numbers = sorted(int(n) for n in workspace.measurements.get_image_numbers())
        if module is None or not numbers:
            return
        first = _image_set(module, workspace, numbers[0])
        if not first or not session.manager().settings.reader.readahead:
            return
        second = _image_set(module, workspace, numbers[1]) if len(numbers) > 1 else []
        _shared.announce(first, second, lambda: ())
        _shared.launch(first[0].ref)
    except Exception as exc:
        log.debug("the first image set is read when it is asked for: %s", exc)


def file_list_argument(argv: Sequence[str]) -> str | None:
    """The file of ``--file-list FILE`` (or ``--file-list=FILE``) on CellProfiler's
    command line, or None."""
    for number, arg in enumerate(argv):
        if arg == "--file-list" and number + 1 < len(argv):
            return argv[number + 1]
        if arg.startswith("--file-list="):
            return arg.partition("=")[2]
    return None


def listed_images(path: str) -> list[ObjectRef]:
    """The OMERO images of a CellProfiler file list (one file or URL a line), in the
    order CellProfiler keeps them: ``Pipeline.add_urls`` sorts the URLs it makes of the
    lines (``pathname2url``), so the first image set starts with the first of those."""
    from cellprofiler_core.utilities.pathname import pathname2url

    compat.install()  # ``omero:iid=N`` stays a URL, as it will when CellProfiler reads it
    urls = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            urls.append(line if line.startswith("file:") else pathname2url(line))
    return [refs.parse_image(url) for url in sorted(urls) if refs.is_image_reference(url)]


def warm_first_image(argv: Sequence[str]) -> threading.Thread | None:
    """Start reading the first OMERO image of the file list on ``argv`` (``--file-list``)
    in the background: the file list's metadata in one batch, then the image's z=0, t=0
    plane of every channel (what "Images (planes extracted)" and NamesAndTypes ask a 2D
    image for) into the read-ahead cache, inside ``reader.cache_mib``; the thread, or
    None when nothing was started.

    For a headless ``cellprofiler -c -r`` run handed a session (the plugin calls this
    only after ``session.connect_early`` started the join). Over a slow network the
    first image set overlaps nothing, so its pixels are asked for while CellProfiler
    still loads the file list and prepares the run. The planes are read on speculation:
    used when the first image set asks for them, dropped (and their memory freed) like
    any unused read-ahead when the image set announced does not hold the image.
    ``reader.warm_first_image = false`` (or ``reader.readahead = false``) turns it off.
    Never raises.
    """
    try:
        path = file_list_argument(argv)
        settings = session.manager().settings.reader
        if path is None or not (settings.warm_first_image and settings.readahead):
            return None
    except Exception as exc:
        log.debug("the first OMERO image is read when it is asked for: %s", exc)
        return None
    done = threading.Event()
    _shared.warmed_metas = done

    def warm() -> None:
        try:
            try:
                # Read here, not on the thread importing the plugin (a list can be long);
                # an unreadable list is CellProfiler's to report.
                wanted = listed_images(path)
                if not wanted:
                    return
                mgr = session.manager()
                # Joins the session, or waits for the early join (which already made it
                # available to workers: session.after_connect).
                runtime.run(mgr.connect)
                _shared.claim_metas()
                runtime.run(_shared.metas.prefetch, mgr, wanted)
            finally:
                done.set()
            meta = _shared.cached_meta(wanted[0])
            if meta is None:
                return
            plane = PlannedPlane(wanted[0], z=0, t=0)
            with _shared.lock:
                if _shared.held_bytes() + _plane_bytes(meta, plane) > _shared.budget_bytes():
                    _shared.stats.skipped += 1
                    return
                futures = _shared.start(plane, speculative=True)
            log.debug("reading OMERO image %s ahead of the first image set", wanted[0].id)
            wait_all(futures)
            log.debug("OMERO image %s read ahead of the first image set (%d planes)",
                      wanted[0].id, len(futures))
        except Exception as exc:  # reading ahead must never fail a pipeline
            log.debug("the first OMERO image is read when it is asked for: %s", exc)

    thread = threading.Thread(target=warm, name="omero-warm-first", daemon=True)
    thread.start()
    return thread


def image_set_starting(current: Sequence[PlannedPlane], upcoming: Sequence[PlannedPlane]
                       ) -> None:
    """Announce an image set and the one expected next without NamesAndTypes (what
    ``announce_image_set`` does for a pipeline): for LoadData-like callers and the
    benchmark."""
    _shared.announce(current, upcoming, lambda: ())


def read_ahead_stats() -> ReadAheadStats:
    """What reading ahead has done in this process."""
    return _shared.stats


class OMEROReader(Reader):
    """Reads images from OMERO servers (Ice or omero-ms-pixel-buffer), by reference URL."""

    reader_name = session.READER_NAME
    variable_revision_number = 1
    supported_filetypes: set[str] = set()
    supported_schemes = {"omero", "http", "https"}

    def __init__(self, image_file: Any) -> None:
        compat.install()
        super().__init__(image_file)
        self.ref = refs.parse_image(image_file.url)
        self._image: ImageReader | None = None
        self._meta: ImageMeta | None = None

    # -- class API -------------------------------------------------------------------------

    @classmethod
    def supports_format(cls, image_file: Any, allow_open: bool = False, volume: bool = False
                        ) -> int:
        url = getattr(image_file, "url", "")
        return 1 if isinstance(url, str) and refs.is_image_reference(url) else -1

    @classmethod
    def supports_url(cls) -> bool:
        return True

    @staticmethod
    def get_settings() -> list[tuple[str, str, str, type, Any]]:
        """The reader's settings; each default is what applies until the user sets it
        (environment, settings file, package default), see ``session``."""
        return session.reader_settings()

    # -- plumbing --------------------------------------------------------------------------

    def _reader(self) -> ImageReader:
        if self._image is None:
            self._image = _shared.acquire(self.ref)
        return self._image

    def metadata(self) -> ImageMeta:
        """The image's metadata (connecting to OMERO on first use).

        Refused for want of a session, the reader asks the ``omero_login_needed`` hook
        (the GUI shows its Connect dialog) and tries once more when a plugin says so.
        """
        if self._meta is None:
            mgr = session.manager()
            was_connected = mgr.connected
            try:
                self._meta = runtime.run(self._reader().metadata)
            except AuthError as exc:
                if not session.login_needed(self.ref, exc):
                    raise
                self._meta = runtime.run(self._reader().metadata)
            if not was_connected:
                session.after_connect(mgr)
            _shared.claim_metas()
            _shared.metas.put(self.ref, self._meta)
        return self._meta

    def _plane_futures(self, z: int, t: int, region: Region | None, first: int
                       ) -> dict[int, Future[np.ndarray]]:
        meta = self.metadata()
        key: PlaneKey = (self.ref, z, t, region)
        reader = self._reader()
        _shared.launch(self.ref)
        with _shared.lock:
            futures = _shared.planes.get(key)
            _shared.claim(key)
            if futures is not None and first in futures:
                _shared.planes.move_to_end(key)
                return futures
            futures = dict(futures or {})
            readahead = session.manager().settings.reader.readahead
            wanted = [first] + ([c for c in range(meta.size_c) if c != first]
                                if readahead else [])
            start_reads(reader, meta, z, t, region, wanted, futures)
            w = region.w if region else meta.size_x
            h = region.h if region else meta.size_y
            _shared.remember(key, futures, len(futures) * w * h * meta.pixel_type.bytes_per_pixel)
            return futures

    def _plane(self, z: int, c: int, t: int, region: Region | None) -> np.ndarray:
        futures = self._plane_futures(z, t, region, c)
        try:
            data = futures[c].result()
        except BaseException:
            with _shared.lock:  # a failed fetch must be retried, not remembered
                _shared._drop((self.ref, z, t, region))
            raise
        return data[0, 0]

    def _check(self, series: int | None, c: int | None, z: int, t: int) -> ImageMeta:
        meta = self.metadata()
        if series not in (None, 0):
            raise IndexError(f"OMERO image {self.ref.id} has one series; series={series} "
                             "does not exist.")
        meta.check_plane(z=z, c=0 if c is None else c, t=t)
        return meta

    @staticmethod
    def _rescale(meta: ImageMeta) -> tuple[float, float] | None:
        if meta.pixel_type in (PixelType.FLOAT, PixelType.DOUBLE):
            return None
        return meta.pixel_type.value_range

    @staticmethod
    def _raw(data: np.ndarray) -> np.ndarray:
        return data.astype(np.uint8) if data.dtype == np.bool_ else data

    def _answer(self, data: np.ndarray, meta: ImageMeta, channels: Sequence[int],
                channel_names: list[str] | None, wants_rescale: bool) -> Any:
        """Fill ``channel_names`` and add the rescale tuple when CellProfiler asks for it."""
        if channel_names is not None:
            channel_names.clear()
            channel_names.extend(meta.channel_names[cc] for cc in channels)
        return (data, self._rescale(meta)) if wants_rescale else data

    def index_to_zct(self, index: int) -> tuple[int, int, int]:
        """The (z, c, t) of plane ``index`` in XYZCT order (z fastest)."""
        meta = self.metadata()
        total = meta.size_z * meta.size_c * meta.size_t
        if not 0 <= index < total:
            raise IndexError(f"OMERO image {self.ref.id} has {total} planes; index={index} "
                             "is out of range.")
        z = index % meta.size_z
        c = (index // meta.size_z) % meta.size_c
        t = index // (meta.size_z * meta.size_c)
        return z, c, t

    # -- Reader API ------------------------------------------------------------------------

    def read(self, wants_metadata_rescale: bool = False, series: int | None = None,
             index: int | None = None, c: int | None = None, z: int | None = None,
             t: int | None = None, xywh: tuple[int, int, int, int] | None = None,
             channel_names: list[str] | None = None) -> Any:
        if index is not None:
            z, c, t = self.index_to_zct(int(index))
        zz, tt = int(z or 0), int(t or 0)
        meta = self._check(series, c, zz, tt)
        region = Region(*(int(v) for v in xywh)) if xywh is not None else None
        channels = list(range(meta.size_c)) if c is None else [int(c)]
        planes = [self._raw(self._plane(zz, cc, tt, region)) for cc in channels]
        data = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
        return self._answer(data, meta, channels, channel_names, wants_metadata_rescale)

    def read_volume(self, wants_metadata_rescale: bool = False, series: int | None = None,
                    c: int | None = None, z: int | None = None, t: int | None = None,
                    xywh: tuple[int, int, int, int] | None = None,
                    channel_names: list[str] | None = None) -> Any:
        tt = int(t or 0)
        meta = self._check(series, c, 0, tt)
        region = Region(*(int(v) for v in xywh)) if xywh is not None else None
        channels = tuple(range(meta.size_c)) if c is None else (int(c),)
        zs = tuple(range(meta.size_z)) if z is None else (int(z),)
        reader = self._reader()
        data = runtime.run(functools.partial(reader.read, z=zs, c=channels, t=tt,
                                             region=region))  # (Z, C, Y, X)
        data = self._raw(data)
        volume = data[:, 0] if len(channels) == 1 else np.moveaxis(data, 1, -1)
        return self._answer(volume, meta, channels, channel_names, wants_metadata_rescale)

    def get_series_metadata(self) -> dict[str, Any]:
        meta = self.metadata()
        return {MD_SIZE_S: 1, MD_SIZE_C: [meta.size_c], MD_SIZE_Z: [meta.size_z],
                MD_SIZE_T: [meta.size_t], MD_SIZE_Y: [meta.size_y], MD_SIZE_X: [meta.size_x],
                MD_SERIES_NAME: [meta.name.replace("|", "/")]}

    def close(self) -> None:
        if self._image is not None:
            self._image = None
            _shared.release(self.ref)

    def __del__(self) -> None:
        # A finaliser must not block: it may run on any thread, inside any lock.
        if self._image is not None:
            self._image = None
            with contextlib.suppress(Exception):
                _shared.release(self.ref, wait=False)


# -- OMERO metadata for CellProfiler's Metadata module ----------------------------------------

#: Metadata names the reader gives an image in a plate (as ``urls --loaddata`` does).
PLATE_KEYS = ("Plate", "Well", "Row", "Column", "Field")


def omero_file_metadata(urls: Sequence[str], namespaces: Sequence[str] | None = None, *,
                        tags: bool = True) -> tuple[dict[str, dict[str, str]], list[Any]]:
    """OMERO's metadata of every OMERO image URL of a file list, by URL, and the key
    name collisions met: key-value pairs (but this package's own, e.g. measurements a
    run wrote back, unless ``namespaces`` names them) as ``<key>`` (made safe, see
    ``core.annotations.metadata_names``), tags as ``Tags``, plate position as Plate,
    Well, Row, Column, Field. One batched request for the whole list (the connection
    pages it); URLs that are not OMERO images are left out.
    """
    from cellprofiler_core.constants.measurement import RESERVED_METADATA_KEYS

    from cellprofiler_omero.core.annotations import TAGS_KEY, metadata_names, plate_values

    by_url = {url: refs.parse_image(url) for url in urls if refs.is_image_reference(url)}
    if not by_url:
        return {}, []
    ids = list(dict.fromkeys(ref.id for ref in by_url.values()))
    mgr = session.manager()

    async def fetch() -> Any:
        return await mgr.call(lambda c: c.image_annotations(ids, namespaces, tags=tags),
                              next(iter(by_url.values())),
                              what=f"reading OMERO metadata of {len(ids)} image(s)")

    try:
        found = runtime.run(fetch)
    except AuthError as exc:
        # As a read does: the GUI may ask the user to log in, then it is tried once more.
        if not session.login_needed(next(iter(by_url.values())), exc):
            raise
        found = runtime.run(fetch)
    session.after_connect(mgr)
    own = bool(namespaces)  # named namespaces are taken as asked, this package's included
    keys = {key for ann in found.values() for key in ann.values(own=own)}
    names, collisions = metadata_names(keys, [*RESERVED_METADATA_KEYS, *PLATE_KEYS, TAGS_KEY])
    out: dict[str, dict[str, str]] = {}
    for url, ref in by_url.items():
        ann = found.get(ref.id)
        if ann is None:
            continue
        values = plate_values(ann.plate)
        values.update({names[key]: value for key, value in ann.values(own=own).items()})
        if ann.tags:
            values[TAGS_KEY] = ann.tag_value()
        out[url] = values
    return out, collisions

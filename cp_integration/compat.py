"""What CellProfiler needs to know about OMERO URLs, installed when a plugin is imported.

* ``omero`` joins ``PASSTHROUGH_SCHEMES`` so ``omero:iid=N`` is treated as a URL and
  never downloaded or turned into a file path.
* The Images module's "Images only" filter recognises OMERO image references
  (which have no image file extension), so pasted OMERO links are not filtered out.
* OMERO links added to the file list lose a trailing ``/`` (``…/img_detail/6/``):
  CellProfiler stores the list in HDF5 groups named by path parts and an empty last
  part breaks it. The link names the same image either way.
* ``omero:iid=N`` has no path part: CellProfiler files such URLs under its
  ``:root:`` group but looks for their plane metadata under an empty name (which
  HDF5 refuses) when "Extract image planes" is on; metadata calls are pointed at
  ``:root:`` the way CellProfiler's own file-list calls already are.

* Images and NamesAndTypes tell the OMERO reader about the run: the file list's
  metadata is fetched in batches (``reader.prefetch_file_list``) before Images'
  plane extraction and after NamesAndTypes' ``prepare_run`` (which then starts reading
  the first image set, ``reader.start_first_image_set``), and every image set is
  announced before NamesAndTypes' ``run`` (``reader.announce_image_set``) so the
  next one is read ahead. Only OMERO images are affected; these calls never raise.
* In CellProfiler's in-process run (headless ``-c -r``, the demo), from NamesAndTypes'
  ``prepare_run`` to the pipeline's ``end_run``, Python's garbage collector
  runs only in CellProfiler's thread (``collect_garbage_in_cellprofilers_thread``):
  h5py's lock and a collection on one of this package's threads could deadlock.

Both are idempotent and leave every other URL to CellProfiler's own logic.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from cellprofiler_omero.core import refs

log = logging.getLogger(__name__)
_installed = False


def install() -> None:
    """Apply the changes once per process (safe to call from every plugin file)."""
    global _installed
    if _installed:
        return
    _installed = True
    from cellprofiler_core.constants import image as image_constants

    if "omero" not in image_constants.PASSTHROUGH_SCHEMES:
        image_constants.PASSTHROUGH_SCHEMES.append("omero")
    _patch_is_image()
    _patch_add_urls()
    _patch_stemless_metadata()
    _patch_names_and_types()
    from cellprofiler_omero.cp_integration import metadata

    metadata.install()  # OMERO annotations as a Metadata module extraction method


def _patch_stemless_metadata() -> None:
    import os

    from cellprofiler_core.utilities import hdf5_dict

    cls = hdf5_dict.HDF5FileList
    if getattr(cls.add_metadata, "_cellprofiler_omero", False):
        return
    add_original: Callable[..., Any] = cls.add_metadata
    get_original: Callable[..., Any] = cls.get_metadata

    def rooted(url: str) -> str:
        return url if os.path.split(url)[0] else f"{hdf5_dict.ROOT}/{url}"

    @functools.wraps(add_original)
    def add_metadata(self: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        return add_original(self, rooted(url), *args, **kwargs)

    @functools.wraps(get_original)
    def get_metadata(self: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        return get_original(self, rooted(url), *args, **kwargs)

    add_metadata._cellprofiler_omero = True  # type: ignore[attr-defined]
    cls.add_metadata = add_metadata
    cls.get_metadata = get_metadata

def _patch_names_and_types() -> None:
    try:
        from cellprofiler_core.modules.namesandtypes import NamesAndTypes
    except ImportError as exc:  # its GUI parts need wx unless CellProfiler is headless
        log.debug("NamesAndTypes not importable (%s): no image-set read-ahead", exc)
        return

    from cellprofiler_omero.cp_integration import reader

    if getattr(NamesAndTypes.run, "_cellprofiler_omero", False):
        return
    run_original: Callable[..., Any] = NamesAndTypes.run
    prepare_original: Callable[..., Any] = NamesAndTypes.prepare_run

    @functools.wraps(prepare_original)
    def prepare_run(self: Any, workspace: Any) -> Any:
        if not workspace.pipeline.test_mode and reader.runs_image_sets_here():
            # Reads start while the run is prepared (start_first_image_set, below).
            collect_garbage_in_cellprofilers_thread()
        result = prepare_original(self, workspace)
        if result and not workspace.pipeline.test_mode:
            reader.prefetch_file_list(workspace)
            reader.start_first_image_set(workspace)
        return result

    @functools.wraps(run_original)
    def run(self: Any, workspace: Any) -> Any:
        if not workspace.pipeline.test_mode and reader.runs_image_sets_here():
            collect_garbage_in_cellprofilers_thread()
        # First: NamesAndTypes' own run may already read the image set's planes.
        reader.announce_image_set(self, workspace)
        return run_original(self, workspace)

    run._cellprofiler_omero = True  # type: ignore[attr-defined]
    NamesAndTypes.run = run
    NamesAndTypes.prepare_run = prepare_run

    from cellprofiler_core.pipeline import Pipeline

    end_original: Callable[..., Any] = Pipeline.end_run

    @functools.wraps(end_original)
    def end_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        # run_with_yield calls end_run in its finally, after every module's post_run
        # (which still close table senders and drain uploads beside our threads), and
        # also when a run fails or is cancelled.
        garbage_collected_anywhere_again()
        return end_original(self, *args, **kwargs)

    Pipeline.end_run = end_run

    from cellprofiler_core.modules.images import Images

    images_original: Callable[..., Any] = Images.prepare_run

    @functools.wraps(images_original)
    def images_prepare_run(self: Any, workspace: Any) -> Any:
        # "Extract image planes" asks every image for its sizes, one reader (and one
        # metadata query) each: fetch them for the whole file list first, in batches.
        if self.want_split.value and not workspace.pipeline.in_batch_mode():
            reader.prefetch_file_list(workspace)
        return images_original(self, workspace)

    Images.prepare_run = images_prepare_run


#: While CellProfiler runs image sets with automatic collection off, every this many
#: image sets the old generation is collected too (a full collection of CellProfiler's
#: heap costs ~0.8 s of CPU; the young generations are collected at every image set).
FULL_COLLECTION_EVERY = 32
_collection = {"disabled_here": False, "image_sets": 0}


def collect_garbage_in_cellprofilers_thread() -> None:
    """An in-process run is prepared or an image set starts in CellProfiler's thread:
    from now until the run's end,
    Python's cyclic garbage collector runs only here (automatic collection off; the
    young generations collected now, at every image set, the old one now and then).

    CellProfiler writes its measurements through h5py while this package's loop and
    worker threads (reads ahead, uploads, table rows) run Python beside it: a collection
    started on one of those could free an h5py object while CellProfiler's thread holds
    h5py's lock (h5py/h5py#2019; the deadlock ``cp_integration.distributed`` avoids on
    Dask workers the same way). Where collection is already off (a Dask worker's batch),
    whoever turned it off turns it on again.
    """
    import gc

    if gc.isenabled():
        gc.disable()
        _collection["disabled_here"] = True
    _collection["image_sets"] += 1
    full = _collection["image_sets"] % FULL_COLLECTION_EVERY == 0
    gc.collect(2 if full else 1)


def garbage_collected_anywhere_again() -> None:
    """The run is over (the pipeline's ``end_run``, after every module's ``post_run``,
    also when a run stops early): automatic collection as before."""
    import gc

    if _collection["disabled_here"]:
        _collection["disabled_here"] = False
        gc.collect(1)
        gc.enable()


def normalise_url(url: str) -> str:
    """An OMERO image link without a trailing slash; other URLs unchanged."""
    if url.endswith("/") and refs.is_image_reference(url):
        return url.rstrip("/")
    return url


def _patch_add_urls() -> None:
    from cellprofiler_core.pipeline import Pipeline

    original: Callable[..., Any] = Pipeline.add_urls
    if getattr(original, "_cellprofiler_omero", False):
        return

    @functools.wraps(original)
    def add_urls(self: Any, urls: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, [normalise_url(u) for u in urls], *args, **kwargs)

    add_urls._cellprofiler_omero = True  # type: ignore[attr-defined]
    Pipeline.add_urls = add_urls


def _patch_is_image() -> None:
    import cellprofiler_core.utilities.image as image_utilities

    original: Callable[..., Any] = image_utilities.is_image
    if getattr(original, "_cellprofiler_omero", False):
        return

    @functools.wraps(original)
    def is_image(filename: str) -> bool:
        return bool(original(filename)) or refs.is_image_reference(filename)

    is_image._cellprofiler_omero = True  # type: ignore[attr-defined]
    image_utilities.is_image = is_image
    try:
        import importlib

        images_module: Any = importlib.import_module("cellprofiler_core.modules.images")
        if getattr(images_module, "is_image", None) is original:
            images_module.is_image = is_image
    except ImportError:  # pragma: no cover - the Images module always ships with core
        log.debug("Images module not importable; its filter keeps its own is_image")

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
        result = prepare_original(self, workspace)
        if result and not workspace.pipeline.test_mode:
            reader.prefetch_file_list(workspace)
            reader.start_first_image_set(workspace)
        return result

    @functools.wraps(run_original)
    def run(self: Any, workspace: Any) -> Any:
        # First: NamesAndTypes' own run may already read the image set's planes.
        reader.announce_image_set(self, workspace)
        return run_original(self, workspace)

    run._cellprofiler_omero = True  # type: ignore[attr-defined]
    NamesAndTypes.run = run
    NamesAndTypes.prepare_run = prepare_run

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

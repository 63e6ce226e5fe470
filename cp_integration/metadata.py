"""OMERO annotations as metadata in CellProfiler's Metadata module.

CellProfiler 5 has no "Extract from image file headers" any more: its Metadata module
extracts from file and folder names or imports a CSV, its upgrade drops the old
header-extraction groups, and a reader's only channel is ``get_series_metadata``
(plane sizes, merged into the file's metadata by the Images module and cleared again by
the Metadata module). So this package adds one more extraction method to the Metadata
module, ``X_OMERO`` ("Extract from OMERO (key-value pairs, tags, plate)"): for the
OMERO images among the files it applies to, ``reader.omero_file_metadata`` fetches
key-value pairs, tags and plate positions for the whole file list in one batched
request, and they become the files' metadata — so NamesAndTypes can match on them and
Groups can group by them, exactly like metadata from file names.

The method is applied after CellProfiler's own methods (whose values it overrides for
the same key). The keys it offers are those the last extraction found (as
CellProfiler 4 did for header metadata): press "Update" in the Metadata module after
changing the file list. They are recorded in the group's "Metadata file name"
setting, which this method does not otherwise use (``omero-keys:A,B``), because
CellProfiler's analysis workers and a reloaded pipeline know only the settings: the
measurement columns a worker declares (and ExportToOMEROTable's tables) must be the
ones the main process declared. Keys that had to be renamed (two OMERO keys with one
safe name, or a key equal to a reserved name) are logged, one line per collision.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

X_OMERO = "Extract from OMERO (key-value pairs, tags, plate)"
#: How the keys found are recorded in the group's (otherwise unused) file-name setting.
KEYS_MARK = "omero-keys:"


def recorded_keys(group: Any) -> list[str]:
    """The keys the last extraction of ``group`` found (``[]`` before any)."""
    text = str(group.csv_filename.value)
    if not text.startswith(KEYS_MARK):
        return []
    return [key for key in text[len(KEYS_MARK):].split(",") if key]


def _ours(module: Any) -> list[Any]:
    return [group for group in module.extraction_methods
            if group.extraction_method.value == X_OMERO]


def install() -> None:
    """Add ``X_OMERO`` to the Metadata module (idempotent)."""
    try:
        from cellprofiler_core.constants.modules import metadata as constants
        from cellprofiler_core.modules import metadata as module
    except ImportError as exc:  # a CellProfiler without this module layout: reads still work
        log.warning("OMERO metadata extraction is not available in this CellProfiler (%s)",
                    exc)
        return

    if X_OMERO not in constants.X_ALL_EXTRACTION_METHODS:
        # The module's Choice settings hold this very list, so the new method is offered
        # by every Metadata module, including ones already made.
        constants.X_ALL_EXTRACTION_METHODS.append(X_OMERO)
    cls = module.Metadata
    if getattr(cls.run_extraction, "_cellprofiler_omero", False):
        return
    cls.run_extraction = _run_extraction(cls.run_extraction)
    cls.get_metadata_keys = _get_metadata_keys(cls.get_metadata_keys)
    cls.visible_settings = _visible_settings(cls.visible_settings)


def _mark(func: Callable[..., Any]) -> Callable[..., Any]:
    func._cellprofiler_omero = True  # type: ignore[attr-defined]
    return func


def _run_extraction(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_extraction(self: Any, file_objects: Any) -> Any:
        ours = _ours(self)
        if not ours or not self.wants_metadata.value:
            return original(self, file_objects)
        from cellprofiler_core.constants.modules.metadata import F_FILTERED_IMAGES
        from cellprofiler_core.setting import FileCollectionDisplay

        # CellProfiler's own loop refuses a method it does not know: it gets the others.
        every = self.extraction_methods
        self.extraction_methods = [group for group in every if group not in ours]
        try:
            result = original(self, file_objects)
        finally:
            self.extraction_methods = every
        from cellprofiler_omero.cp_integration.reader import omero_file_metadata

        files = list(file_objects)
        found, collisions = omero_file_metadata([f.url for f in files])
        for collision in collisions:
            log.warning("Metadata: %s", collision)
        for group in ours:
            keys: set[str] = set()
            for file_object in files:
                if group.filter_choice == F_FILTERED_IMAGES and not group.filter.evaluate(
                        (FileCollectionDisplay.NODE_FILE, file_object.modpath, None)):
                    continue
                values = found.get(file_object.url)
                if values:
                    file_object.add_metadata(self.apply_data_types(values))
                    keys.update(values)
            group.csv_filename.value = KEYS_MARK + ",".join(sorted(keys))
        return result

    return _mark(run_extraction)


def _get_metadata_keys(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_metadata_keys(self: Any) -> Any:
        keys = original(self)
        if self.wants_metadata.value:
            for group in _ours(self):
                keys = set(keys) | set(recorded_keys(group))
        return keys

    return get_metadata_keys


def _visible_settings(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def visible_settings(self: Any) -> Any:
        from cellprofiler_core.constants.modules.metadata import F_FILTERED_IMAGES

        result = list(original(self))
        for group in _ours(self):
            # By identity: a setting compares equal to its value, not to the setting.
            at = next((i + 1 for i, s in enumerate(result) if s is group.extraction_method),
                      None)
            if at is not None:
                extra = [group.filter_choice]
                if group.filter_choice == F_FILTERED_IMAGES:
                    extra.append(group.filter)
                result[at:at] = extra
        return result

    return visible_settings

"""ExportToOMEROKeyValues: chosen per-image measurements as key-value pairs on the source.

For every image set, one MapAnnotation (namespace ``MEASUREMENTS_NS`` unless changed)
holding the chosen Image measurements (``Count_Nuclei = 57`` …) is linked to the image
set's source OMERO image (the lowest OMERO image id among its images, as the tables'
``Image`` column), so results are searchable in OMERO.web. A separate module rather
than a part of ExportToOMEROTable: the two are chosen independently (pairs need no
table, a table no pairs), and their settings stay simple.

Exactly once: the run has a key (the SHA-256 of a definition version, every module's
settings and every image set's sources — the same parts as ExportToOMEROTable's), made
in ``prepare_run`` and handed to analysis workers as an experiment measurement. The
annotation's description is ``cellprofiler-omero measurements of run <key>``; before
creating, the writer looks for this user's annotation with that namespace and
description on the image, so a retry, a rerun or a second worker adds nothing. An
image set whose source image the user may not annotate fails with ``CannotAnnotate``
before anything is written; one with no OMERO source image fails with
``UnsupportedData``. Test mode writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

from cellprofiler_core.constants.measurement import COLTYPE_VARCHAR
from cellprofiler_core.module import Module
from cellprofiler_core.setting import ValidationError
from cellprofiler_core.setting.multichoice import MeasurementMultiChoice
from cellprofiler_core.setting.text import Text

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.annotations import (
    MEASUREMENTS_NS,
    NewKeyValues,
    WrittenKeyValues,
)
from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.tables import run_key
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.cp_integration.export_table import IMAGE, pipeline_run_key_parts
from cellprofiler_omero.cp_integration.save_images import source_images

log = logging.getLogger(__name__)

#: Version of the run key's definition: bump it when ``run_key_parts`` changes.
RUN_KEY_VERSION = "cellprofiler-omero key-value run key 1"
RUN_KEY_FEATURE = "OMERO_KeyValues_RunKey"


def identity(key: str) -> str:
    """The annotation description that identifies the measurements of run ``key``."""
    return f"cellprofiler-omero measurements of run {key}"


def run_key_parts(workspace: Any) -> list[str]:
    """What identifies a run (as ExportToOMEROTable's key, under this module's version)."""
    return pipeline_run_key_parts(workspace, RUN_KEY_VERSION)


def text_of(value: Any) -> str:
    """A measurement as the text of a pair: numbers in full, missing ones (None, NaN)
    empty."""
    if value is None:
        return ""
    if hasattr(value, "item"):
        value = value.item()  # numpy scalars: their Python value's shortest repr
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


async def put_key_values(mgr: SessionManager, request: NewKeyValues) -> WrittenKeyValues:
    """Write one annotation through the configured transports, retried within the
    budget (the writer looks for an earlier attempt's annotation first)."""

    async def attempt(conn: Any) -> WrittenKeyValues:
        sink = await mgr.registry.open_annotation_writer(conn)
        async with contextlib.aclosing(sink):  # a plugin's sink needs only aclose()
            written: WrittenKeyValues = await sink.put_key_values(request)
            return written

    return await mgr.call(attempt, what=f"annotating image {request.image_id}")


class ExportToOMEROKeyValues(Module):
    """Write chosen per-image measurements as key-value pairs on each image set's OMERO image.

Each image set's source image in OMERO (the lowest OMERO image id among the image set's
images) gets one key-value pair annotation (a MapAnnotation) in the chosen namespace,
holding the chosen Image measurements, e.g. ``Count_Nuclei = 57``. OMERO.web shows them
under the image's Key-Value Pairs and can search them.

**Once per run.** The annotation's description names the run (a hash of the pipeline,
its settings and the image sets' images): running the same pipeline on the same
images again finds the annotations of that run and writes none; changing the
pipeline or the images makes a new run and new annotations beside the old ones.
Image sets that share a source image get the first one's annotation.

An image you may not annotate (another user's, in a read-only group) stops the run
with an error before anything is written on it. Test mode writes nothing.
"""

    module_name = "ExportToOMEROKeyValues"
    category = "File Processing"
    variable_revision_number = 1

    def create_settings(self) -> None:
        self.measurements = MeasurementMultiChoice(
            "Select the measurements to write",
            doc="Image measurements (one value per image set) to write as key-value "
                "pairs, the measurement's name as the key.")
        self.namespace = Text(
            "Namespace", MEASUREMENTS_NS,
            doc="The annotations' namespace: OMERO.web and scripts find them by it.")

    def settings(self) -> list[Any]:
        return [self.measurements, self.namespace]

    def volumetric(self) -> bool:
        return True

    def features(self) -> list[str]:
        """The chosen Image measurements, in the order chosen."""
        return [self.measurements.get_measurement_feature(choice)
                for choice in self.measurements.selections
                if self.measurements.get_measurement_object(choice) == IMAGE]

    def validate_module(self, pipeline: Any) -> None:
        others = [choice for choice in self.measurements.selections
                  if self.measurements.get_measurement_object(choice) != IMAGE]
        if others:
            raise ValidationError(
                f"Only Image measurements can be written as key-value pairs (one value per "
                f"image); {', '.join(others)} are object measurements. Choose their "
                f"per-image summaries instead (e.g. from MeasureObjectSizeShape's means "
                f"via CalculateMath) or export objects with ExportToOMEROTable.",
                self.measurements)
        if not self.namespace.value.strip():
            raise ValidationError("Enter a namespace for the annotations.", self.namespace)

    # -- the run ---------------------------------------------------------------------------

    def prepare_run(self, workspace: Any) -> bool:
        if workspace.pipeline.test_mode:
            return True
        key = run_key(run_key_parts(workspace))
        log.info("ExportToOMEROKeyValues: run key %s", key)
        workspace.measurements.add_experiment_measurement(RUN_KEY_FEATURE, key)
        return True

    def request(self, workspace: Any) -> NewKeyValues:
        """The annotation this image set asks for (see the module's help)."""
        m = workspace.measurements
        sources = source_images(m)
        if not sources:
            raise UnsupportedData(
                f"Image set {m.image_set_number} has no OMERO image to annotate: its images "
                "do not come from OMERO.",
                hint="Run ExportToOMEROKeyValues only on images loaded from OMERO links, or "
                     "remove it from the pipeline.")
        key = str(m.get_experiment_measurement(RUN_KEY_FEATURE))
        pairs = tuple((feature, text_of(m.get_current_image_measurement(feature)
                                        if m.has_feature(IMAGE, feature) else None))
                      for feature in self.features())
        return NewKeyValues(sources[0][0], self.namespace.value.strip(), pairs, identity(key))

    def run(self, workspace: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        request = self.request(workspace)
        mgr = session.manager()
        written = runtime.run(put_key_values, mgr, request)
        session.after_connect(mgr)
        log.info("%s key-value annotation %s on image %s",
                 "found" if written.reused else "wrote", written.annotation_id,
                 written.image_id)
        if self.show_window:
            workspace.display_data.written = (written.image_id, written.annotation_id,
                                              written.reused, len(request.pairs))

    def get_measurement_columns(self, pipeline: Any) -> list[tuple[str, str, str]]:
        return [("Experiment", RUN_KEY_FEATURE, COLTYPE_VARCHAR)]

    def display(self, workspace: Any, figure: Any) -> None:
        written = getattr(workspace.display_data, "written", None)
        figure.set_subplots((1, 1))
        text = "Nothing written this cycle." if written is None else (
            f"{'Found' if written[2] else 'Wrote'} annotation {written[1]} with "
            f"{written[3]} pair(s) on image {written[0]}")
        figure.subplot_table(0, 0, [[text]])

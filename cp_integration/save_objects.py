"""SaveObjectsToOMERO: CellProfiler objects as OMERO ROIs on the image they were found in.

One ROI per object, on the OMERO image the chosen input image came from (found from
the image's URL, as SaveImagesToOMERO finds its sources), on that image's Z plane and
time point. Each ROI is named ``"<objects> <number>"`` (its shapes' text too) and holds
a Mask (OMERO's bit mask of the object's bounding box: exact) or a Polygon (the
object's outline, simplified within a tolerance: lighter, for big objects), with an
optional stroke colour. Each object's ROI id is recorded as the object measurement
``OMERO_RoiID``; ExportToOMEROTable turns it into an ``omero.grid.RoiColumn`` beside the
Image column, so a table row leads to its outline in OMERO.web.

Why a module of its own and not a part of ExportToOMEROTable: ROIs belong to the image
set (they go on its image, in the cycle that found the objects, on analysis workers
too), while tables are written per run; and a pipeline may want ROIs without tables.

ROIs are saved in batches under the message limit, exactly once: every ROI carries a
key made from the image, the objects' name and number, the shape settings and the
object's pixels, and the server is asked which keys it holds before each batch is
sent. A retried batch, a rerun of the pipeline or another analysis worker therefore
never duplicates a ROI, and the measurement records the ROI found. Nothing is written
for an image set whose image is not an OMERO image, that the user may not annotate,
or whose objects are larger than the OMERO image: the run stops with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from cellprofiler_core.constants.measurement import C_T, C_URL, C_Z, COLTYPE_INTEGER
from cellprofiler_core.module import Module
from cellprofiler_core.setting import Binary, Color, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber, LabelSubscriber
from cellprofiler_core.setting.text import Float

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.roi_encoding import label_rois, rgba_to_int
from cellprofiler_omero.core.roi_writing import save_rois
from cellprofiler_omero.core.shapes import NewRoi, Plane, ShapeKind
from cellprofiler_omero.cp_integration import session

log = logging.getLogger(__name__)

SHAPE_MASK = "Mask"
SHAPE_POLYGON = "Polygon"
CATEGORY = "OMERO"
ROI_ID = "RoiID"
#: The object measurement holding each object's ROI id (ExportToOMEROTable's Roi column).
ROI_ID_FEATURE = f"{CATEGORY}_{ROI_ID}"


class NotAnOmeroImage(UnsupportedData):
    """ROIs were to go on an image that did not come from OMERO.

    ``image_name`` is the CellProfiler image chosen, ``url`` where it came from (``None``
    when the image set has no URL for it) and ``image_number`` the image set.
    """

    def __init__(self, message: str, *, image_name: str, url: str | None,
                 image_number: int | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_name = image_name
        self.url = url
        self.image_number = image_number


def omero_image_of(measurements: Any, image_name: str, image_number: int | None = None
                   ) -> refs.ObjectRef:
    """The OMERO image an image set's ``image_name`` came from (its URL), or
    ``NotAnOmeroImage``. ``image_number``: that image set (the current one if ``None``)."""
    feature = f"{C_URL}_{image_name}"
    url: Any = None
    if measurements.has_feature("Image", feature):
        url = (measurements.get_current_image_measurement(feature) if image_number is None
               else measurements["Image", feature, image_number])
    if isinstance(url, str) and refs.is_image_reference(url):
        return refs.parse_image(url)
    where = f" of image set {image_number}" if image_number is not None else ""
    raise NotAnOmeroImage(
        f"Image {image_name!r}{where} did not come from OMERO "
        f"({'no URL' if not url else repr(url)}), so SaveObjectsToOMERO has no OMERO "
        "image to put its ROIs on. Nothing was saved.",
        image_name=image_name, url=url if isinstance(url, str) else None,
        image_number=image_number,
        hint="Choose an image that NamesAndTypes loads from an OMERO link (omero:iid=…, "
             "an OMERO.web URL), e.g. the one the objects were found in.")


def _plane_index(measurements: Any, category: str, image_name: str) -> int | None:
    feature = f"{category}_{image_name}"
    if not measurements.has_feature("Image", feature):
        return None
    value = measurements.get_current_image_measurement(feature)
    try:
        return None if value is None or np.isnan(float(value)) else int(value)
    except (TypeError, ValueError):
        return None


class SaveObjectsToOMERO(Module):
    """Save objects as OMERO ROIs (one per object) on the OMERO image they were found in.

Each object becomes one ROI named "<objects> <number>" on the OMERO image that the
chosen input image came from, on its Z plane and time point: a **Mask** (exact: OMERO's
bit mask of the object) or a **Polygon** (the outline, simplified so that no point
moves more than the tolerance; lighter for big objects). The ROI ids are recorded as
the objects' measurement OMERO_RoiID, which ExportToOMEROTable writes as a Roi column
beside the Image column.

Reruns are safe: a ROI already saved for the same object (same image, objects, number,
shape settings and pixels) is found, not made again.
"""

    module_name = "SaveObjectsToOMERO"
    category = "File Processing"
    variable_revision_number = 1

    def create_settings(self) -> None:
        self.objects_name = LabelSubscriber(
            "Select the objects to save", "None",
            doc="The objects to save as ROIs, one ROI per object.")
        self.image_name = ImageSubscriber(
            "Select the image whose OMERO image receives the ROIs", "None",
            doc="An image loaded from OMERO (usually the one the objects were found in): "
                "the ROIs go on the OMERO image it came from, on its Z plane and time "
                "point.")
        self.shape = Choice(
            "Save each object as", [SHAPE_MASK, SHAPE_POLYGON], SHAPE_MASK,
            doc="Mask: OMERO's bit mask of the object, pixel for pixel. Polygon: the "
                "object's outline (of its largest part, when it is split), simplified.")
        self.tolerance = Float(
            "Polygon tolerance (pixels)", 1.0, minval=0.0,
            doc="How far the simplified outline may stray from the object's edge; 0 keeps "
                "every contour point.")
        self.wants_color = Binary("Set the ROIs' stroke colour?", False,
                                  doc="No: OMERO.iviewer's default colour.")
        self.color = Color("Stroke colour", "#00FF00",
                           doc="The outline colour OMERO.web and OMERO.iviewer draw.")

    def settings(self) -> list[Any]:
        return [self.objects_name, self.image_name, self.shape, self.tolerance,
                self.wants_color, self.color]

    def visible_settings(self) -> list[Any]:
        result = [self.objects_name, self.image_name, self.shape]
        if self.shape == SHAPE_POLYGON:
            result.append(self.tolerance)
        result.append(self.wants_color)
        if self.wants_color.value:
            result.append(self.color)
        return result

    def volumetric(self) -> bool:
        return True

    def validate_module(self, pipeline: Any) -> None:
        try:
            self.stroke_color()
        except ValueError as exc:
            raise ValidationError(str(exc), self.color) from None

    # -- settings as the core takes them --------------------------------------------------

    def shape_kind(self) -> ShapeKind:
        return ShapeKind.POLYGON if self.shape == SHAPE_POLYGON else ShapeKind.MASK

    def stroke_color(self) -> int | None:
        if not self.wants_color.value:
            return None
        from matplotlib.colors import to_rgba

        red, green, blue, alpha = (round(v * 255) for v in to_rgba(self.color.value))
        return rgba_to_int(red, green, blue, alpha)

    # -- running ---------------------------------------------------------------------------

    def prepare_run(self, workspace: Any) -> bool:
        """Refuse the whole run before any ROI is written when an image set's image is
        not an OMERO image (the image sets are known by now)."""
        if workspace.pipeline.test_mode:
            return True
        m = workspace.measurements
        for number in m.get_image_numbers():
            omero_image_of(m, self.image_name.value, int(number))
        return True

    def rois_for(self, workspace: Any) -> tuple[refs.ObjectRef, dict[int, NewRoi]]:
        """The OMERO image and one keyed ROI per object of this image set."""
        m = workspace.measurements
        image = omero_image_of(m, self.image_name.value)
        objects = workspace.object_set.get_objects(self.objects_name.value)
        z = _plane_index(m, C_Z, self.image_name.value)
        t = _plane_index(m, C_T, self.image_name.value)
        volumetric = bool(objects.volumetric)
        plane = Plane(z=None if volumetric else z, t=t)
        rois: dict[int, NewRoi] = {}
        # get_labels gives overlapping objects (ijv) in separate label planes.
        for labels, _indices in objects.get_labels():
            rois.update(label_rois(
                labels, image.id, self.objects_name.value, kind=self.shape_kind(),
                tolerance=float(self.tolerance.value), plane=plane,
                stroke_color=self.stroke_color()))
        return image, dict(sorted(rois.items()))

    def run(self, workspace: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        image, rois = self.rois_for(workspace)
        objects = workspace.object_set.get_objects(self.objects_name.value)
        mgr = session.manager()
        numbers = list(rois)
        result = runtime.run(lambda: save_rois(mgr, [rois[n] for n in numbers]))
        session.after_connect(mgr)
        ids = np.zeros(int(objects.count), dtype=np.int64)
        for number, saved in zip(numbers, result.rois, strict=True):
            if 1 <= number <= len(ids):
                ids[number - 1] = saved.id
        workspace.measurements.add_measurement(self.objects_name.value, ROI_ID_FEATURE, ids)
        log.info("%s: %d ROIs on image %s (%d new, %d found from an earlier run)",
                 self.objects_name.value, len(numbers), image.id, result.added,
                 len(numbers) - result.added)
        if self.show_window:
            workspace.display_data.saved = (image.id, len(numbers), result.added)

    # -- measurements ------------------------------------------------------------------------

    def get_measurement_columns(self, pipeline: Any) -> list[tuple[str, str, str]]:
        return [(self.objects_name.value, ROI_ID_FEATURE, COLTYPE_INTEGER)]

    def get_categories(self, pipeline: Any, object_name: str) -> list[str]:
        return [CATEGORY] if object_name == self.objects_name.value else []

    def get_measurements(self, pipeline: Any, object_name: str, category: str) -> list[str]:
        if object_name == self.objects_name.value and category == CATEGORY:
            return [ROI_ID]
        return []

    def display(self, workspace: Any, figure: Any) -> None:
        saved = getattr(workspace.display_data, "saved", None)
        figure.set_subplots((1, 1))
        text = "Nothing saved this cycle." if saved is None else (
            f"{saved[1]} ROIs on OMERO image {saved[0]} ({saved[2]} new)")
        figure.subplot_table(0, 0, [[text]])

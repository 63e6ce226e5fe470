"""LoadObjectsFromOMERO: the OMERO ROIs on an image set's image as CellProfiler objects.

The OMERO image is the one the chosen input image was read from (its URL, as
SaveImagesToOMERO finds its source images); the ROIs are those on the image set's Z/T
plane (shapes without a Z or T lie on every plane). Each ROI becomes one object — the
union of its shapes on the plane, rasterised by ``core.rasterise``'s pixel rule — and
overlapping ROIs stay separate objects (CellProfiler's ijv objects, a pixel in both),
never merged. Object numbers follow ROI ids, and each object's ROI id is recorded as
``OMERO_RoiID``, so measurements lead back to the ROI.

Settings: the objects' name, the image, which shape kinds to load, a name/text filter
(substring, or a glob with ``*``/``?``) and an annotation namespace. An image without
ROIs gives zero objects; an input image that is not an OMERO image is one clear error.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from cellprofiler_core.constants.measurement import (
    C_COUNT,
    C_LOCATION,
    C_NUMBER,
    C_T,
    C_URL,
    C_Z,
    COLTYPE_FLOAT,
    COLTYPE_INTEGER,
    FF_COUNT,
    FTR_CENTER_X,
    FTR_CENTER_Y,
    FTR_OBJECT_NUMBER,
    IMAGE,
    M_LOCATION_CENTER_X,
    M_LOCATION_CENTER_Y,
    M_NUMBER_OBJECT_NUMBER,
)
from cellprofiler_core.module import Module
from cellprofiler_core.object import Objects
from cellprofiler_core.setting import ValidationError
from cellprofiler_core.setting.multichoice import MultiChoice
from cellprofiler_core.setting.subscriber import FileImageSubscriber
from cellprofiler_core.setting.text import LabelName, Text
from cellprofiler_core.utilities.core.module.identify import (
    add_object_count_measurements,
    add_object_location_measurements_ijv,
)

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.errors import InvalidReference, UnsupportedData
from cellprofiler_omero.core.rasterise import RoiObjects, rois_to_objects
from cellprofiler_omero.core.roi_reading import RoiFilter, read_rois
from cellprofiler_omero.core.shapes import ShapeKind
from cellprofiler_omero.cp_integration import session

log = logging.getLogger(__name__)

CATEGORY = "OMERO"
FTR_ROI_ID = "RoiID"
#: Shape kinds offered, in the order OMERO.iviewer lists its drawing tools' results.
KIND_CHOICES = [k.value for k in (ShapeKind.POLYGON, ShapeKind.RECTANGLE, ShapeKind.ELLIPSE,
                                  ShapeKind.POINT, ShapeKind.MASK)]


class NotAnOmeroImage(InvalidReference):
    """The image chosen to find ROIs on was not read from OMERO.

    ``image_name``: the pipeline's name of the image; ``url``: where it came from
    (``None`` when the image set has no URL for it).
    """

    def __init__(self, message: str, *, image_name: str, url: str | None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_name = image_name
        self.url = url


def _plane_index(value: Any) -> int:
    """Z or T of an image set's plane (0 when CellProfiler recorded none)."""
    if value is None:
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return 0 if math.isnan(number) else int(number)


class LoadObjectsFromOMERO(Module):
    """Load the OMERO ROIs on the image set's image as objects (overlaps kept)."""

    module_name = "LoadObjectsFromOMERO"
    category = "Object Processing"
    variable_revision_number = 1

    def create_settings(self) -> None:
        self.image_name = FileImageSubscriber(
            "Select the image the ROIs are drawn on", "None",
            doc="An image read from OMERO: the ROIs of the OMERO image it came from, on "
                "this image set's Z and T plane, become the objects. The objects have "
                "this image's size.")
        self.objects_name = LabelName(
            "Name the objects to be loaded", "OMERORois",
            doc="The name of the objects in the pipeline; one object per ROI.")
        self.kinds = MultiChoice(
            "Shape types to load", KIND_CHOICES, KIND_CHOICES,
            doc="Only these kinds of shapes are loaded; a ROI with none of them is left "
                "out. Lines, polylines and labels are never loaded (they cover no area). "
                "A point is one pixel.")
        self.text_filter = Text(
            "Only ROIs whose name or text matches", "",
            doc="Leave blank for every ROI. Otherwise a ROI is loaded when its name or "
                "the text of one of its shapes contains this (case ignored), or matches "
                "it as a pattern when it holds * or ? (e.g. 'nucleus*').")
        self.namespace = Text(
            "Only ROIs annotated in namespace", "",
            doc="Leave blank for every ROI. Otherwise only ROIs with an annotation in "
                "this namespace (how tools mark the ROIs they make) are loaded.")

    def settings(self) -> list[Any]:
        return [self.image_name, self.objects_name, self.kinds, self.text_filter,
                self.namespace]

    def visible_settings(self) -> list[Any]:
        return self.settings()

    def validate_module(self, pipeline: Any) -> None:
        if not self.kinds.get_selections():
            raise ValidationError("Choose at least one shape type to load.", self.kinds)

    def selection(self) -> RoiFilter:
        """The ROI filter the settings describe."""
        kinds = frozenset(ShapeKind(k) for k in self.kinds.get_selections())
        namespace = self.namespace.value.strip()
        return RoiFilter(kinds=None if len(kinds) == len(ShapeKind) else kinds,
                         text=self.text_filter.value.strip(),
                         namespaces=(namespace,) if namespace else ())

    # -- running -------------------------------------------------------------------------

    def source_image(self, measurements: Any) -> tuple[refs.ObjectRef, int, int]:
        """(OMERO image, Z, T) of the chosen image in the current image set."""
        name = self.image_name.value
        feature = f"{C_URL}_{name}"
        url = measurements.get_current_image_measurement(feature) \
            if measurements.has_feature(IMAGE, feature) else None
        if not isinstance(url, str) or not refs.is_image_reference(url):
            shown = url if isinstance(url, str) and url else "no URL"
            raise NotAnOmeroImage(
                f"LoadObjectsFromOMERO reads ROIs of OMERO images, but image '{name}' of "
                f"image set {measurements.image_set_number} comes from {shown}.",
                image_name=name, url=url if isinstance(url, str) else None,
                hint="Choose an image loaded from an OMERO link (omero:iid=…, an "
                     "OMERO.web or iviewer URL).")
        z = measurements.get_current_image_measurement(f"{C_Z}_{name}") \
            if measurements.has_feature(IMAGE, f"{C_Z}_{name}") else None
        t = measurements.get_current_image_measurement(f"{C_T}_{name}") \
            if measurements.has_feature(IMAGE, f"{C_T}_{name}") else None
        return refs.parse_image(url), _plane_index(z), _plane_index(t)

    def load(self, workspace: Any) -> tuple[RoiObjects, Any]:
        """The ROIs as objects, and the image they lie on."""
        ref, z, t = self.source_image(workspace.measurements)
        image = workspace.image_set.get_image(self.image_name.value)
        if image.volumetric:
            raise UnsupportedData(
                f"LoadObjectsFromOMERO makes 2-D objects, but image "
                f"'{self.image_name.value}' is a 3-D volume.",
                hint="Load the image plane by plane (NamesAndTypes: not 'Process as 3D'); "
                     "each plane's ROIs become that plane's objects.")
        height, width = image.pixel_data.shape[:2]
        mgr = session.manager()
        rois = runtime.run(lambda: read_rois(mgr, ref.id, self.selection(), host=ref.host))
        session.after_connect(mgr)
        found = rois_to_objects(rois, height, width, z=z, t=t)
        if found.beyond:
            log.warning("image %s: %d ROIs reach beyond the %d×%d image and were clipped "
                        "(ids %s)", ref.id, len(found.beyond), width, height,
                        ", ".join(map(str, found.beyond[:10])))
        if found.empty:
            log.warning("image %s: %d ROIs cover no pixel of the image on plane Z=%d T=%d "
                        "and gave no object (ids %s)", ref.id, len(found.empty), z, t,
                        ", ".join(map(str, found.empty[:10])))
        return found, image

    def run(self, workspace: Any) -> None:
        found, image = self.load(workspace)
        name = self.objects_name.value
        objects = Objects()
        objects.set_ijv(found.ijv, shape=image.pixel_data.shape[:2])
        objects.parent_image = image
        workspace.object_set.add_objects(objects, name)
        m = workspace.measurements
        add_object_count_measurements(m, name, found.count)
        add_object_location_measurements_ijv(m, name, found.ijv, found.count)
        m.add_measurement(name, self.roi_id_feature, np.array(found.roi_ids, dtype=np.int64))
        if self.show_window:
            workspace.display_data.summary = (found.count, len(found.beyond),
                                              len(found.empty))

    @property
    def roi_id_feature(self) -> str:
        return f"{CATEGORY}_{FTR_ROI_ID}"

    def get_measurement_columns(self, pipeline: Any) -> list[tuple[str, str, str]]:
        name = self.objects_name.value
        return [(name, M_LOCATION_CENTER_X, COLTYPE_FLOAT),
                (name, M_LOCATION_CENTER_Y, COLTYPE_FLOAT),
                (name, M_NUMBER_OBJECT_NUMBER, COLTYPE_INTEGER),
                (name, self.roi_id_feature, COLTYPE_INTEGER),
                (IMAGE, FF_COUNT % name, COLTYPE_INTEGER)]

    def get_categories(self, pipeline: Any, object_name: str) -> list[str]:
        if object_name == IMAGE:
            return [C_COUNT]
        if object_name == self.objects_name.value:
            return [C_LOCATION, C_NUMBER, CATEGORY]
        return []

    def get_measurements(self, pipeline: Any, object_name: str, category: str) -> list[str]:
        if object_name == IMAGE and category == C_COUNT:
            return [self.objects_name.value]
        if object_name == self.objects_name.value:
            return {C_LOCATION: [FTR_CENTER_X, FTR_CENTER_Y], C_NUMBER: [FTR_OBJECT_NUMBER],
                    CATEGORY: [FTR_ROI_ID]}.get(category, [])
        return []

    def display(self, workspace: Any, figure: Any) -> None:
        count, beyond, empty = getattr(workspace.display_data, "summary", (0, 0, 0))
        figure.set_subplots((1, 1))
        figure.subplot_table(0, 0, [["Objects (one per ROI)", str(count)],
                                    ["ROIs clipped to the image", str(beyond)],
                                    ["ROIs with no pixel on this plane", str(empty)]])

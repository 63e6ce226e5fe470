"""ROIs and their shapes, as OMERO models them, without a transport.

The vocabulary shared by the ROI writer (CellProfiler objects → OMERO ROIs), the ROI
reader (OMERO ROIs → CellProfiler objects) and the transports that move them.
Coordinates are OMERO's: pixels, x to the right, y down, the origin at the image's
top-left corner; a Mask's ``mask`` is a boolean array (rows = y) whose top-left
pixel sits at (``x``, ``y``).

``z``, ``t`` and ``c`` are the plane a shape lies on (``None``: every plane of that
dimension, as OMERO reads an unset ``theZ``/``theT``/``theC``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class ShapeKind(enum.Enum):
    """OMERO's shape classes (``omero.model.<Kind>``) this package reads or writes."""

    MASK = "Mask"
    POLYGON = "Polygon"
    RECTANGLE = "Rectangle"
    ELLIPSE = "Ellipse"
    POINT = "Point"


@dataclass(frozen=True)
class Plane:
    """Where a shape lies: ``None`` for a dimension means all of its planes."""

    z: int | None = None
    t: int | None = None
    c: int | None = None


@dataclass(frozen=True)
class ShapeStyle:
    """How OMERO.web / OMERO.iviewer draw a shape; colours are OMERO's signed RGBA int."""

    stroke_color: int | None = None
    fill_color: int | None = None
    text: str | None = None


@dataclass(frozen=True, eq=False)
class MaskShape:
    """OMERO's Mask: a bit mask of ``mask.shape`` placed at (``x``, ``y``)."""

    x: int
    y: int
    mask: np.ndarray  # bool, (height, width)
    plane: Plane = field(default_factory=Plane)
    style: ShapeStyle = field(default_factory=ShapeStyle)
    kind: ShapeKind = field(default=ShapeKind.MASK, init=False)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])


@dataclass(frozen=True)
class PolygonShape:
    """OMERO's Polygon: a closed outline through ``points`` ((x, y) pairs)."""

    points: tuple[tuple[float, float], ...]
    plane: Plane = field(default_factory=Plane)
    style: ShapeStyle = field(default_factory=ShapeStyle)
    kind: ShapeKind = field(default=ShapeKind.POLYGON, init=False)


@dataclass(frozen=True)
class RectangleShape:
    """OMERO's Rectangle: top-left corner (``x``, ``y``), ``width`` × ``height``."""

    x: float
    y: float
    width: float
    height: float
    plane: Plane = field(default_factory=Plane)
    style: ShapeStyle = field(default_factory=ShapeStyle)
    kind: ShapeKind = field(default=ShapeKind.RECTANGLE, init=False)


@dataclass(frozen=True)
class EllipseShape:
    """OMERO's Ellipse: centre (``x``, ``y``) and the two radii."""

    x: float
    y: float
    radius_x: float
    radius_y: float
    plane: Plane = field(default_factory=Plane)
    style: ShapeStyle = field(default_factory=ShapeStyle)
    kind: ShapeKind = field(default=ShapeKind.ELLIPSE, init=False)


@dataclass(frozen=True)
class PointShape:
    """OMERO's Point at (``x``, ``y``)."""

    x: float
    y: float
    plane: Plane = field(default_factory=Plane)
    style: ShapeStyle = field(default_factory=ShapeStyle)
    kind: ShapeKind = field(default=ShapeKind.POINT, init=False)


Shape = MaskShape | PolygonShape | RectangleShape | EllipseShape | PointShape


@dataclass(frozen=True)
class NewRoi:
    """A ROI to save on an image: its name, description and shapes.

    ``key`` is the writer's exactly-once key (kept in the ROI's description or
    namespaces by the transport), so a retry or a rerun finds the ROI it made.
    """

    image_id: int
    name: str
    shapes: tuple[Shape, ...]
    description: str = ""
    namespace: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Roi:
    """A ROI as the server holds it."""

    id: int
    image_id: int
    name: str | None
    description: str | None
    namespaces: tuple[str, ...]
    shapes: tuple[Shape, ...]
    #: the server's ids of ``shapes``, in the same order
    shape_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SavedRoi:
    """A ROI a writer saved, or found saved by an earlier attempt (``reused``)."""

    id: int
    image_id: int
    key: str | None = None
    reused: bool = False

"""CellProfiler objects (a label image) as OMERO ROIs: one ROI per object, pure numpy.

A label image holds 0 for background and the object number (1, 2, …) inside each
object. Each object becomes one ``NewRoi`` named ``"<objects name> <number>"`` whose
shapes are either

* a **Mask**: OMERO's bit mask of the object's bounding box, placed at its top-left
  corner; the bytes are the box's pixels row by row (y, then x), one bit each,
  most significant bit first, packed without padding between rows — what
  ``numpy.packbits`` gives for the flattened box and what OMERO.iviewer and
  ``omero-rois`` read — or
* a **Polygon**: the outer contour of the object (its largest connected part when
  it is split), traced between pixel centres and simplified so that no point of the
  outline moves by more than ``tolerance`` pixels (Douglas–Peucker).

A 3-D label image (Z, Y, X) gives one shape per Z plane the object touches, all in
the object's one ROI. Objects are found with ``scipy.ndimage.find_objects`` (one pass
over the image), so every object costs only its bounding box: 10,000 objects on one
image take a fraction of a second.

Exactly once: every ROI carries a key (``NewRoi.key``) derived from the target image,
the objects' name, the object number, the shape settings and the object's own pixels,
so a retry or a rerun of the same pipeline finds the ROI it made (the transport keeps
the key with the ROI) instead of making another, while a changed segmentation makes
new ROIs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.shapes import (
    MaskShape,
    NewRoi,
    Plane,
    PolygonShape,
    Shape,
    ShapeKind,
    ShapeStyle,
)

#: Version of the ROI key's definition: bump it when ``roi_key`` changes.
ROI_KEY_VERSION = "cellprofiler-omero roi key 1"
#: The shape kinds a label image can be saved as.
LABEL_SHAPE_KINDS = (ShapeKind.MASK, ShapeKind.POLYGON)


class LabelsLargerThanImage(UnsupportedData):
    """Objects do not fit the OMERO image they are to be saved on.

    ``labels_size`` is the label image's ``(width, height[, depth])`` (or the first
    shape's extent beyond the image), ``image_size`` the image's ``(size_x, size_y[,
    size_z])`` and ``image_id`` the OMERO image (``None`` when not known yet).
    """

    def __init__(self, message: str, *, labels_size: tuple[int, ...],
                 image_size: tuple[int, ...], image_id: int | None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.labels_size = labels_size
        self.image_size = image_size
        self.image_id = image_id


@dataclass(frozen=True)
class ObjectShapes:
    """The shapes of one object (one per Z plane it touches)."""

    number: int
    shapes: tuple[Shape, ...]
    #: SHA-256 of the object's pixels (its bounding box and bit mask per plane).
    digest: str


# -- masks ---------------------------------------------------------------------------------


def pack_mask(mask: np.ndarray) -> bytes:
    """OMERO's Mask bytes for a boolean ``(height, width)`` array."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()


def unpack_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """The boolean ``(height, width)`` array of OMERO Mask bytes (``pack_mask``'s inverse)."""
    needed = (width * height + 7) // 8
    if len(data) < needed:
        raise UnsupportedData(
            f"A {width}×{height} mask needs {needed} bytes; it has {len(data)}.")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=needed))
    return bits[:width * height].reshape(height, width).astype(bool)


def rgba_to_int(red: int, green: int, blue: int, alpha: int = 255) -> int:
    """OMERO's colour int (RGBA in one signed 32-bit int, as OMERO.web and iviewer read it)."""
    for name, value in (("red", red), ("green", green), ("blue", blue), ("alpha", alpha)):
        if not 0 <= value <= 255:
            raise ValueError(f"Colour component {name}={value} is outside 0–255.")
    value = (red << 24) | (green << 16) | (blue << 8) | alpha
    return value - (1 << 32) if value >= 1 << 31 else value


def parse_color(text: str) -> int:
    """OMERO's colour int for ``#RRGGBB``/``#RRGGBBAA`` (CellProfiler's colour settings)."""
    value = text.strip().lstrip("#")
    if len(value) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"{text!r} is not a colour (#RRGGBB or #RRGGBBAA).")
    parts = [int(value[i:i + 2], 16) for i in range(0, len(value), 2)]
    return rgba_to_int(*parts)


# -- polygons ------------------------------------------------------------------------------


def simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas–Peucker: the fewest of ``points`` (an open or closed (N, 2) path) such that
    none of the others lies farther than ``tolerance`` from the simplified path."""
    count = len(points)
    if count < 3:
        return points
    keep = np.zeros(count, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, count - 1)]
    while stack:
        first, last = stack.pop()
        if last <= first + 1:
            continue
        chord = points[last] - points[first]
        offsets = points[first + 1:last] - points[first]
        length = float(np.hypot(chord[0], chord[1]))
        if length == 0.0:  # a closed path's ends meet: distance to that point
            distances = np.hypot(offsets[:, 0], offsets[:, 1])
        else:
            distances = np.abs(chord[0] * offsets[:, 1] - chord[1] * offsets[:, 0]) / length
        farthest = int(np.argmax(distances))
        if distances[farthest] > tolerance:
            split = first + 1 + farthest
            keep[split] = True
            stack += [(first, split), (split, last)]
    return points[keep]


def _corners(contour: np.ndarray) -> np.ndarray:
    """A closed contour (first point = last) without the points inside straight runs:
    the same polygon through fewer points, closed again at a corner."""
    ring = contour[:-1] if len(contour) > 1 and np.array_equal(contour[0], contour[-1]) \
        else contour
    if len(ring) < 3:
        return contour
    incoming = ring - np.roll(ring, 1, axis=0)
    outgoing = np.roll(ring, -1, axis=0) - ring
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    ring = ring[np.abs(cross) > 1e-9]
    return np.concatenate([ring, ring[:1]]) if len(ring) else contour


def outline(mask: np.ndarray, tolerance: float) -> tuple[tuple[float, float], ...]:
    """The simplified outer contour of ``mask``'s largest connected part, as (x, y)
    points relative to the mask's top-left corner, in OMERO's convention: pixel (i, j)
    covers [i, i + 1) × [j, j + 1), so the outline runs along pixel edges (as a Mask at
    the same x, y covers them) and a pixel whose centre it encloses is the object's."""
    from skimage.measure import find_contours

    # One pixel of background all round, so every contour closes.
    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return ()

    def area(contour: np.ndarray) -> float:
        rows, cols = contour[:, 0], contour[:, 1]
        return abs(float(np.dot(rows[:-1], cols[1:]) - np.dot(rows[1:], cols[:-1]))) / 2

    # Outer contours enclose their holes' contours: the largest area is the outer contour
    # of the largest part (4-connected, as CellProfiler labels objects).
    # find_contours puts pixel centres at integers: -1 for the padding, +0.5 to OMERO's.
    points = max(contours, key=area)[:, ::-1] - 0.5
    contour = _corners(_pixel_edges(points))
    if tolerance > 0:
        simplified = simplify(contour, tolerance)
        if len(simplified) >= 4:  # a triangle and its closing point: still an area
            contour = simplified
    if len(contour) > 1 and np.array_equal(contour[0], contour[-1]):
        contour = contour[:-1]  # OMERO closes a polygon itself
    return tuple((float(x), float(y)) for x, y in contour)


def _pixel_edges(points: np.ndarray) -> np.ndarray:
    """A closed (x, y) contour through pixel-edge midpoints, with each cut corner (a
    diagonal half-pixel step) replaced by the pixel corner it cuts, so the path runs
    along pixel edges: a rectangle of pixels becomes its four corners, exactly."""
    steps = np.diff(points, axis=0)
    diagonal = np.flatnonzero(np.all(np.abs(steps) > 0.25, axis=1))
    if diagonal.size == 0:
        return points
    here, there = points[diagonal], points[diagonal + 1]
    # A midpoint with a whole x lies on a vertical edge: the corner takes its x and the
    # other point's y (which, being on a horizontal edge, is whole).
    on_vertical = np.abs(here[:, 0] - np.round(here[:, 0])) < 1e-9
    corners = np.where(on_vertical[:, None],
                       np.stack([here[:, 0], there[:, 1]], axis=1),
                       np.stack([there[:, 0], here[:, 1]], axis=1))
    return np.insert(points, diagonal + 1, corners, axis=0)


# -- label images ----------------------------------------------------------------------------


def _planes(labels: np.ndarray) -> np.ndarray:
    """``labels`` as (Z, Y, X) integers; refuses what is not a label image."""
    array = np.asarray(labels)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise UnsupportedData(
            f"A label image has 2 (Y, X) or 3 (Z, Y, X) dimensions, not {array.ndim}.")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iu":
        if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
            raise UnsupportedData("A label image holds whole object numbers; this one has "
                                  "fractions.", hint="Save objects, not an intensity image.")
        array = array.astype(np.int64)
    if array.size and int(array.min()) < 0:
        raise UnsupportedData("A label image holds 0 (background) and positive object "
                              "numbers; this one has negative values.")
    return array


def check_fits(labels_shape: Sequence[int], size_x: int, size_y: int, size_z: int = 1, *,
               z_start: int = 0, image_id: int | None = None) -> None:
    """Refuse objects larger than the image they go on (``LabelsLargerThanImage``).

    ``labels_shape`` is the label image's (Y, X) or (Z, Y, X) shape; a 2-D label image
    lies on plane ``z_start``, a 3-D one on ``z_start`` onwards.
    """
    shape = tuple(int(s) for s in labels_shape)
    depth, height, width = (1, *shape) if len(shape) == 2 else shape
    if width <= size_x and height <= size_y and z_start + depth <= size_z:
        return
    on = f"image {image_id}" if image_id is not None else "the image"
    what = f"{width}×{height}" + (f"×{depth}" if len(shape) == 3 else "")
    raise LabelsLargerThanImage(
        f"The objects' label image ({what} pixels) is larger than {on} "
        f"({size_x}×{size_y}" + (f"×{size_z}" if len(shape) == 3 else "") + " pixels"
        + (f", from plane {z_start}" if z_start else "") + "): its ROIs would lie "
        "outside it.",
        labels_size=(width, height) if len(shape) == 2 else (width, height, depth),
        image_size=(size_x, size_y) if len(shape) == 2 else (size_x, size_y, size_z),
        image_id=image_id,
        hint="Save the objects on the image they were found in (not on a cropped or "
             "resized one), or resize the objects to the image first.")


def shape_extent(shape: Shape) -> tuple[float, float]:
    """The right and bottom edge (x, y) a shape reaches, in pixels."""
    if isinstance(shape, MaskShape):
        return shape.x + shape.width, shape.y + shape.height
    if isinstance(shape, PolygonShape):
        if not shape.points:
            return 0.0, 0.0
        return (max(x for x, _ in shape.points) + 1.0, max(y for _, y in shape.points) + 1.0)
    raise UnsupportedData(f"Cannot check the extent of a {shape.kind.value} here.")


def iter_objects(labels: np.ndarray, *, kind: ShapeKind = ShapeKind.MASK,
                 tolerance: float = 1.0, plane: Plane = Plane(),
                 style: ShapeStyle = ShapeStyle(), text_prefix: str | None = None
                 ) -> Iterator[ObjectShapes]:
    """The shapes of every object of ``labels`` in object-number order.

    ``labels``: (Y, X) or (Z, Y, X) label image. ``kind``: ``MASK`` or ``POLYGON``.
    ``tolerance``: polygon simplification, in pixels (0 keeps every contour point).
    ``plane``: where a 2-D label image lies (its ``z`` is the first plane of a 3-D
    one). ``style``: colours of every shape. ``text_prefix``: each shape's text is
    ``"<text_prefix> <number>"`` (``None``: no text).
    """
    from scipy import ndimage

    if kind not in LABEL_SHAPE_KINDS:
        raise UnsupportedData(
            f"Objects are saved as {' or '.join(k.value for k in LABEL_SHAPE_KINDS)}, "
            f"not as {kind.value}.")
    if tolerance < 0:
        raise ValueError(f"The polygon tolerance must not be negative ({tolerance}).")
    volume = np.asarray(labels).ndim == 3
    planes = _planes(labels)
    z0 = plane.z or 0
    for index, box in enumerate(ndimage.find_objects(planes)):
        if box is None:
            continue
        number = index + 1
        zs, ys, xs = box
        crop = planes[box] == number
        shapes: list[Shape] = []
        digest = hashlib.sha256()
        text = None if text_prefix is None else f"{text_prefix} {number}"
        shape_style = ShapeStyle(style.stroke_color, style.fill_color, text)
        for k in range(crop.shape[0]):
            layer = crop[k]
            rows = np.flatnonzero(layer.any(axis=1))
            if rows.size == 0:
                continue
            cols = np.flatnonzero(layer.any(axis=0))
            top, left = int(rows[0]), int(cols[0])
            bits = layer[top:int(rows[-1]) + 1, left:int(cols[-1]) + 1]
            x, y = xs.start + left, ys.start + top
            z = zs.start + k + z0 if volume else plane.z
            where = Plane(z, plane.t, plane.c)
            digest.update(f"{z},{x},{y},{bits.shape}".encode())
            digest.update(pack_mask(bits))
            if kind is ShapeKind.MASK:
                shapes.append(MaskShape(x, y, bits, where, shape_style))
            else:
                points = outline(bits, tolerance)
                shapes.append(PolygonShape(tuple((px + x, py + y) for px, py in points),
                                           where, shape_style))
        if shapes:
            yield ObjectShapes(number, tuple(shapes), digest.hexdigest())


def roi_key(image_id: int, objects_name: str, number: int, kind: ShapeKind, tolerance: float,
            plane: Plane, digest: str) -> str:
    """The exactly-once key of one object's ROI (SHA-256 hex): the same object saved again
    on the same image with the same settings gets the same key, whoever saves it."""
    identity = "\0".join([ROI_KEY_VERSION, str(image_id), objects_name, str(number),
                          kind.value, repr(float(tolerance)) if kind is ShapeKind.POLYGON
                          else "", str(plane.z), str(plane.t), str(plane.c), digest])
    return hashlib.sha256(identity.encode()).hexdigest()


def label_rois(labels: np.ndarray, image_id: int, objects_name: str, *,
               kind: ShapeKind = ShapeKind.MASK, tolerance: float = 1.0,
               plane: Plane = Plane(), stroke_color: int | None = None,
               fill_color: int | None = None,
               image_size: tuple[int, int, int] | None = None,
               namespace: str | None = None) -> dict[int, NewRoi]:
    """One keyed ``NewRoi`` per object of ``labels`` for image ``image_id``, by object
    number (in object order; numbers without pixels are left out).

    Each ROI (and each of its shapes' text) is named ``"<objects_name> <number>"``.
    ``image_size`` (size_x, size_y, size_z) refuses, before anything is made, a label
    image larger than the image (``LabelsLargerThanImage``). See ``iter_objects`` for
    the other arguments.
    """
    if image_size is not None:
        check_fits(np.shape(labels), *image_size, z_start=plane.z or 0, image_id=image_id)
    style = ShapeStyle(stroke_color=stroke_color, fill_color=fill_color)
    rois: dict[int, NewRoi] = {}
    for obj in iter_objects(labels, kind=kind, tolerance=tolerance, plane=plane, style=style,
                            text_prefix=objects_name):
        rois[obj.number] = NewRoi(
            image_id=image_id, name=f"{objects_name} {obj.number}", shapes=obj.shapes,
            namespace=namespace,
            key=roi_key(image_id, objects_name, obj.number, kind, tolerance, plane,
                        obj.digest))
    return rois

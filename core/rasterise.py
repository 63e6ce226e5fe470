"""OMERO shapes to pixels, exactly, and ROIs to CellProfiler's overlapping objects (ijv).

The pixel rule
--------------
OMERO's coordinates put the image's top-left *corner* at (0, 0): pixel (column ``i``,
row ``j``) is the unit square ``[i, i+1) × [j, j+1)`` and its centre is
``(i + 0.5, j + 0.5)``. That is how a Mask is placed (a ``w``-wide mask at ``x``
covers columns ``x … x+w-1``), how OMERO.iviewer draws shapes over the image, and how
QuPath and ImageJ number pixels. A shape covers a pixel when the pixel's **centre**
lies inside the shape — the rule of Java2D's ``fill``, with which Java tools such as
QuPath draw their masks. A centre exactly on an outline counts when the shape lies to
its right (x increasing) or, on a horizontal edge, below it (Java2D's "insideness"
rule, the "top-left" rule of rasterisers), so shapes that share an edge never both
claim the pixels on it, and a rectangle or a polygon with whole-pixel corners covers
exactly its area in pixels (a ``w × h`` Rectangle at whole coordinates is ``w·h``
pixels).

* **Polygon** (and Rectangle, as its four corners): scanline through the centres of
  each row; inside is the *non-zero* winding rule (OMERO.iviewer fills on a canvas,
  whose default is non-zero; for outlines that do not cross themselves every rule
  agrees).
* **Ellipse**: a centre strictly inside ``((x-cx)/rx)² + ((y-cy)/ry)² < 1``.
* **Point**: the one pixel containing it (``floor(x), floor(y)``).
* **Mask**: its own bits, top-left bit on pixel (``x``, ``y``).

How others do it, and why not theirs: ``omero-rois`` rounds polygon vertices to whole
pixels and calls ``skimage.draw.polygon``, which puts pixel centres at whole
coordinates (half a pixel off OMERO's Mask placement) and includes centres *on* the
outline (so neighbours sharing an edge both claim it, and a 5×5 square covers 36
pixels before its bounding-box crop drops a row and a column); the OMERO server's
``SmartShape.areaPoints`` tests a 0.001-pixel square at each pixel's *corner*, half a
pixel off the centre. ``skimage.draw.polygon`` on centre-shifted vertices agrees with
this module except for centres lying exactly on an edge.

Shapes are clipped to the image; what lay beyond it is reported
(``Raster.beyond``), never silently dropped without a trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cellprofiler_omero.core.shapes import (
    EllipseShape,
    MaskShape,
    PointShape,
    PolygonShape,
    RectangleShape,
    Roi,
    Shape,
)

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Raster:
    """The pixels of one shape inside an image: ``rows[k], cols[k]`` (y, x), no repeats.

    ``beyond`` is true when part of the shape lies outside the image (those pixels are
    not in ``rows``/``cols``); a shape entirely outside has no pixels and ``beyond``.
    """

    rows: np.ndarray
    cols: np.ndarray
    beyond: bool = False

    @property
    def area(self) -> int:
        return int(self.rows.size)


def _spans(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, height: int,
           width: int, beyond: bool) -> Raster:
    """Pixels of half-open column spans ``[starts[k], stops[k])`` on ``rows[k]``, clipped."""
    keep = stops > starts
    rows, starts, stops = rows[keep], starts[keep], stops[keep]
    inside_rows = (rows >= 0) & (rows < height)
    beyond = beyond or bool(np.any(~inside_rows)) or bool(
        np.any((starts < 0) | (stops > width)))
    rows, starts, stops = rows[inside_rows], starts[inside_rows], stops[inside_rows]
    starts = np.clip(starts, 0, width)
    stops = np.clip(stops, 0, width)
    lengths = np.maximum(stops - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        return Raster(_EMPTY, _EMPTY, beyond)
    out_rows = np.repeat(rows, lengths)
    # Column k of span s is starts[s] + (k - first index of s).
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out_cols = np.repeat(starts, lengths) + offsets
    return Raster(out_rows.astype(np.int64), out_cols.astype(np.int64), beyond)


def _row_range(low: float, high: float, height: int) -> tuple[np.ndarray, bool]:
    """Rows whose centre ``r + 0.5`` lies in ``[low, high)``, limited to the image's rows
    (plus whether rows beyond the image were cut off)."""
    first = math.ceil(low - 0.5)
    stop = math.ceil(high - 0.5)
    cut = first < 0 or stop > height
    return np.arange(max(first, 0), min(stop, height), dtype=np.int64), cut


def polygon(points: Sequence[tuple[float, float]], height: int, width: int) -> Raster:
    """Pixels whose centres lie inside the closed outline ``points`` ((x, y) pairs),
    by the non-zero winding rule and the top-left rule on the outline.

    Scanline without a loop over rows: every edge gives its crossings with the rows of
    pixel centres it spans (half-open in y, so a vertex on a row is counted once and
    horizontal edges never), the crossings are sorted by row and x, and the winding
    number between two neighbours is a running sum — a closed outline crosses every row
    as often upwards as downwards, so the sum is back at zero at each row's end. The
    cost grows with the crossings (about the outline's height times its width in
    crossings per row), not with rows × edges.
    """
    if len(points) < 3:
        return Raster(_EMPTY, _EMPTY, False)
    xy = np.asarray(points, dtype=np.float64)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    slanted = y0 != y1
    x0, y0, x1, y1 = x0[slanted], y0[slanted], x1[slanted], y1[slanted]
    if x0.size == 0:
        return Raster(_EMPTY, _EMPTY, False)
    low, high = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows r whose centre r + 0.5 lies in [low, high), within the image's rows.
    first = np.ceil(low - 0.5).astype(np.int64)
    stop = np.ceil(high - 0.5).astype(np.int64)
    cut = bool(np.any(first < 0) or np.any(stop > height))
    first, stop = np.clip(first, 0, height), np.clip(stop, 0, height)
    counts = np.maximum(stop - first, 0)
    total = int(counts.sum())
    if total == 0:
        return Raster(_EMPTY, _EMPTY, cut)
    edge = np.repeat(np.arange(x0.size), counts)
    rows = np.repeat(first, counts) + (
        np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
    yc = rows + 0.5
    xs = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    direction = np.where(y1[edge] > y0[edge], 1, -1)
    order = np.lexsort((xs, rows))
    rows, xs, direction = rows[order], xs[order], direction[order]
    winding = np.cumsum(direction)
    # Between crossings k and k+1 of one row the winding number is winding[k].
    inside = (winding[:-1] != 0) & (rows[:-1] == rows[1:])
    k = np.flatnonzero(inside)
    # Columns whose centre c + 0.5 lies in [x_k, x_k+1); neighbouring spans only touch.
    return _spans(rows[k], np.ceil(xs[k] - 0.5).astype(np.int64),
                  np.ceil(xs[k + 1] - 0.5).astype(np.int64), height, width, cut)


def rectangle(x: float, y: float, w: float, h: float, height: int, width: int) -> Raster:
    """Pixels whose centres lie in ``[x, x+w) × [y, y+h)``."""
    if w < 0:
        x, w = x + w, -w
    if h < 0:
        y, h = y + h, -h
    rows, cut = _row_range(y, y + h, height)
    starts = np.full(rows.size, math.ceil(x - 0.5), dtype=np.int64)
    stops = np.full(rows.size, math.ceil(x + w - 0.5), dtype=np.int64)
    return _spans(rows, starts, stops, height, width, cut and w > 0)


def ellipse(cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> Raster:
    """Pixels whose centres lie strictly inside the axis-aligned ellipse."""
    rx, ry = abs(rx), abs(ry)
    if rx == 0 or ry == 0:
        return Raster(_EMPTY, _EMPTY, False)
    rows, cut = _row_range(cy - ry, cy + ry, height)
    dy = (rows + 0.5 - cy) / ry
    half = rx * np.sqrt(np.clip(1.0 - dy * dy, 0.0, None))
    # Strictly inside: cx - half < c + 0.5 < cx + half.
    starts = np.floor(cx - half - 0.5).astype(np.int64) + 1
    stops = np.ceil(cx + half - 0.5).astype(np.int64)
    return _spans(rows, starts, stops, height, width, cut)


def point(x: float, y: float, height: int, width: int) -> Raster:
    """The pixel containing (``x``, ``y``)."""
    col, row = math.floor(x), math.floor(y)
    if 0 <= row < height and 0 <= col < width:
        return Raster(np.array([row], np.int64), np.array([col], np.int64), False)
    return Raster(_EMPTY, _EMPTY, True)


def mask(x: int, y: int, bits: np.ndarray, height: int, width: int) -> Raster:
    """The set bits of a Mask whose top-left bit lies on pixel (``x``, ``y``)."""
    rows, cols = np.nonzero(np.asarray(bits, dtype=bool))
    rows = rows.astype(np.int64) + int(y)
    cols = cols.astype(np.int64) + int(x)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return Raster(rows[inside], cols[inside], bool(np.any(~inside)))


def rasterise(shape: Shape, height: int, width: int) -> Raster:
    """The pixels of an image ``height × width`` that ``shape`` covers (module rule)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"An image has a positive size, not {width}×{height}.")
    if isinstance(shape, MaskShape):
        return mask(shape.x, shape.y, shape.mask, height, width)
    if isinstance(shape, PolygonShape):
        return polygon(shape.points, height, width)
    if isinstance(shape, RectangleShape):
        return rectangle(shape.x, shape.y, shape.width, shape.height, height, width)
    if isinstance(shape, EllipseShape):
        return ellipse(shape.x, shape.y, shape.radius_x, shape.radius_y, height, width)
    if isinstance(shape, PointShape):
        return point(shape.x, shape.y, height, width)
    raise TypeError(f"Cannot rasterise {type(shape).__name__}.")


def on_plane(shape: Shape, z: int, t: int) -> bool:
    """Whether ``shape`` lies on plane (``z``, ``t``): an unset Z or T means every plane.

    The channel is ignored: objects belong to no channel, and a region drawn while
    looking at one channel still marks that region of the plane.
    """
    return (shape.plane.z is None or shape.plane.z == z) and (
        shape.plane.t is None or shape.plane.t == t)


@dataclass(frozen=True, eq=False)
class RoiObjects:
    """ROIs of one plane as CellProfiler objects: one object per ROI, overlaps kept.

    ``ijv``: rows (y, x, object number), numbers 1 … ``len(roi_ids)``; a pixel covered
    by two ROIs appears once for each (CellProfiler's overlapping objects). A ROI's
    shapes on the plane are unioned (a pixel appears once per ROI).
    ``roi_ids[n - 1]``: the ROI of object ``n``.
    ``beyond``: ROIs (ids) that reach outside the image (clipped to it).
    ``empty``: ROIs whose shapes on the plane cover no pixel of the image — wholly
    outside it, or too thin to hold a pixel centre (no object is made for them).
    ``off_plane``: ROIs with no shape on the plane (no object).
    """

    ijv: np.ndarray
    roi_ids: tuple[int, ...]
    beyond: tuple[int, ...] = ()
    empty: tuple[int, ...] = ()
    off_plane: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.roi_ids)

    def areas(self) -> np.ndarray:
        """Pixels per object, in object order."""
        if self.count == 0:
            return np.zeros(0, np.int64)
        return np.bincount(self.ijv[:, 2], minlength=self.count + 1)[1:]


def rois_to_objects(rois: Iterable[Roi], height: int, width: int, *, z: int = 0,
                    t: int = 0) -> RoiObjects:
    """CellProfiler objects (ijv) of ``rois`` on plane (``z``, ``t``) of an image
    ``height × width``, in the order of ``rois``."""
    parts: list[np.ndarray] = []
    roi_ids: list[int] = []
    beyond: list[int] = []
    empty: list[int] = []
    off_plane: list[int] = []
    for roi in rois:
        shapes = [s for s in roi.shapes if on_plane(s, z, t)]
        if not shapes:
            off_plane.append(roi.id)
            continue
        rasters = [rasterise(s, height, width) for s in shapes]
        flat = np.unique(np.concatenate([r.rows * width + r.cols for r in rasters]))
        if flat.size == 0:
            empty.append(roi.id)
            continue
        if any(r.beyond for r in rasters):
            beyond.append(roi.id)
        number = len(roi_ids) + 1
        roi_ids.append(roi.id)
        parts.append(np.column_stack([flat // width, flat % width,
                                      np.full(flat.size, number, np.int64)]))
    ijv = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    return RoiObjects(ijv.astype(np.int64), tuple(roi_ids), tuple(beyond), tuple(empty),
                      tuple(off_plane))

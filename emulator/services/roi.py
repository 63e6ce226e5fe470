"""ROIs: saving them through IUpdate, and the IRoi service that finds them.

A Roi is stored as an object whose parent is its image (``roi.image``, nullable in
omero-model); each Shape as an object of its concrete class (Mask, Polygon …) whose
parent is its Roi, with every field it was saved with (Mask ``bytes`` byte for byte).
They take the group of their image, as omero-server's ``OmeroInterceptor.evaluateLinkages``
gives a new object linked to another, and linking a Roi to an image needs the ANNOTATE
right on it (``neededRight``: Roi → Image), like an annotation link.

IRoi follows omero-blitz's ``RoiI`` (``src/main/java/ome/services/blitz/impl/RoiI.java``):
``findByImage``/``findByRoi``/``findByPlane``
select distinct ROIs *inner*-joined to their shapes (a ROI without shapes is not found),
ordered by id, filtered by ``RoiOptions.userId``/``groupId`` and paged by
``offset``/``limit``; ``RoiOptions.shapes`` is not used by the real server either.
"""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.model
from omero.rtypes import unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    JAVA_CLASS,
    api_usage,
    security_violation,
    servant,
    validation,
)
from cellprofiler_omero.emulator.modelmap import SHAPE_KINDS
from cellprofiler_omero.emulator.services.common import Caller, SessionServant
from cellprofiler_omero.emulator.store import Obj, Store

#: Java class names, as a real server writes them in messages and Delete2 answers.
JAVA_PACKAGE = "ome.model.roi"

_local = threading.local()


def kind_of(obj: Any) -> str:
    """The omero-model class name of a model object (``MaskI`` → ``Mask``)."""
    name = type(obj).__name__
    return name[:-1] if name.endswith("I") else name


def is_roi_kind(kind: str) -> bool:
    """Whether IUpdate hands objects of this class to ``RoiWriter``."""
    return kind == "Roi" or kind in SHAPE_KINDS


@contextmanager
def batch(store: Store) -> Iterator[None]:
    """One IUpdate call: a single SQLite transaction (so a refused object leaves nothing
    half-written, as the real server's one Hibernate transaction per call), and each
    image's permission looked up once for all the ROIs put on it."""
    outer = getattr(_local, "images", None)
    if outer is None:
        _local.images = {}
        # One call's objects share one creation event, as on a real server.
        _local.now = time.time()
    try:
        with store.transaction():
            yield
    finally:
        if outer is None:
            _local.images = None
            _local.now = None


def _now() -> float:
    now: float | None = getattr(_local, "now", None)
    return time.time() if now is None else now


def _data(kind: str, shape: Any) -> dict[str, Any]:
    """A shape's fields as the store keeps them (only those the client set)."""
    data: dict[str, Any] = {}
    for name, typ in modelmap.shape_fields(kind).items():
        value = getattr(shape, f"_{name}", None)
        if value is None:
            continue
        if typ == "length":
            data[name] = [float(value.getValue()), str(value.getUnit())]
        else:
            data[name] = unwrap(value)
    if kind == "Mask":
        raw = getattr(shape, "_bytes", None)
        if raw is not None:
            data["bytes"] = base64.b64encode(bytes(raw)).decode("ascii")
    transform = getattr(shape, "_transform", None)
    if transform is not None and transform.isLoaded():
        data["transform"] = [float(unwrap(getattr(transform, f"_{a}")) or 0.0)
                             for a in modelmap.TRANSFORM]
    return data


def _java(kind: str, oid: int) -> str:
    package = "ome.model.core" if kind == "Image" else JAVA_PACKAGE
    return f"{package}.{kind}:Id_{oid}"


def _not_granted(store: Store, group_id: int, kind: str, oid: int) -> omero.SecurityViolation:
    """``OmeroInterceptor.throwIfNotGranted``'s refusal of a link to ``kind:oid``."""
    group = store.group(group_id)
    perms = group.perms if group is not None else "------"
    return security_violation(f"Group is {perms}. Cannot link to object: {_java(kind, oid)}")


def _mixed_group(group_id: int, image: Obj) -> Any:
    """``OmeroInterceptor.throwIfGroupsDontMatch``'s refusal of a new ROI on an image of
    another group than the call's (``omero.group``)."""
    import omero.clients  # defines omero.GroupSecurityViolation

    group = "ome.model.meta.ExperimenterGroup:Id_"
    return omero.GroupSecurityViolation(
        serverStackTrace="", serverExceptionClass=JAVA_CLASS["GroupSecurityViolation"],
        message=(f"MIXED GROUP: {JAVA_PACKAGE}.Roi:Id_null(group={group}{group_id}) and "
                 f"{_java('Image', image.id)}(group={group}{image.group_id}) cannot be "
                 "linked."))


class RoiWriter:
    """Saves ROIs and shapes for one IUpdate servant (``UpdateI``)."""

    def __init__(self, servant: SessionServant) -> None:
        self.servant = servant
        self.store = servant.ctx.store

    def save(self, caller: Caller, obj: Any) -> tuple[str, int]:
        """Save a new or changed Roi or Shape (with what it holds); (class, id)."""
        kind = kind_of(obj)
        oid = unwrap(obj.id) if obj.id is not None else None
        if kind == "Roi":
            return ("Roi", self._new_roi(caller, obj) if oid is None
                    else self._existing_roi(caller, obj, oid))
        if oid is None:
            return kind, self._new_shape(caller, kind, obj)
        return kind, self._existing_shape(caller, kind, obj, oid)

    # -- new ---------------------------------------------------------------------------

    def _image(self, caller: Caller, image_id: int) -> Obj:
        cache: dict[int, Obj] | None = getattr(_local, "images", None)
        if cache is not None and image_id in cache:
            return cache[image_id]
        image = self.store.get(image_id, "Image")
        if (image is not None and caller.group_id != -1 and image.group_id != caller.group_id
                and self.store.can_read(caller.user, image.owner_id, image.group_id)):
            # OmeroInterceptor.throwIfGroupsDontMatch: the new ROI would be in the
            # call's group, its image is in another.
            raise _mixed_group(caller.group_id, image)
        if image is None or not self.servant.visible(caller, image):
            raise api_usage(f"Image:{image_id} does not exist.")
        # OmeroInterceptor.neededRight: a Roi needs ANNOTATE on its image.
        if not self.store.can_annotate(caller.user, image.owner_id, image.group_id):
            raise _not_granted(self.store, image.group_id, "Image", image_id)
        if cache is not None:
            cache[image_id] = image
        return image

    def _new_roi(self, caller: Caller, obj: Any) -> int:
        image_ref = getattr(obj, "_image", None)
        image_id: int | None = None
        if image_ref is not None:
            image_id = unwrap(image_ref.id)
            if image_id is None:
                raise api_usage("The emulator cannot create Image objects through IUpdate.")
            group_id = self._image(caller, image_id).group_id
        else:
            group_id = self.servant.write_group(caller)
        user_id = caller.user.id
        roi_id = self.store.insert_many([("Roi", unwrap(obj._name) or "",
                                          unwrap(obj._description) or "", user_id, group_id,
                                          image_id, {})], _now())[0]
        shapes = (obj._shapesSeq or []) if obj.isShapesLoaded() else []
        rows = []
        for shape in shapes:
            if shape is None:
                continue
            if shape.id is not None and unwrap(shape.id) is not None:
                raise api_usage("The emulator does not move existing shapes to a new ROI.")
            kind = kind_of(shape)
            if kind not in SHAPE_KINDS:
                raise api_usage(f"{kind} is not a Shape.")
            rows.append((kind, "", "", user_id, group_id, roi_id, _data(kind, shape)))
        self.store.insert_many(rows, _now())
        self._annotations(caller, roi_id, obj)
        return roi_id

    def _annotations(self, caller: Caller, roi_id: int, obj: Any) -> None:
        """Annotation links that came inside the ROI (``roi.linkAnnotation`` then save),
        saved as IUpdate saves any object's (``UpdateI._collections``)."""
        if obj.isAnnotationLinksLoaded() and obj._annotationLinksSeq:
            self.servant._collections(caller, "Roi", roi_id, obj)  # type: ignore[attr-defined]

    def _new_shape(self, caller: Caller, kind: str, obj: Any) -> int:
        roi_ref = getattr(obj, "_roi", None)
        if roi_ref is None:
            raise validation("not-null property references a null or transient value: "
                             f"{JAVA_PACKAGE}.{kind}.roi")
        roi_id = unwrap(roi_ref.id)
        if roi_id is None:
            # A new ROI saved through one of its shapes: the ROI brings its shapes.
            if not any(s is obj for s in (roi_ref._shapesSeq or [])):
                roi_ref.addShape(obj)
            new_roi = self._new_roi(caller, roi_ref)
            index = next(i for i, s in enumerate(roi_ref._shapesSeq) if s is obj)
            return self.store.by_parents(SHAPE_KINDS, [new_roi])[index].id
        roi = self.store.get(roi_id, "Roi")
        if roi is None or not self.servant.visible(caller, roi):
            raise api_usage(f"Roi:{roi_id} does not exist.")
        # A shape on an existing ROI is a WRITE link to it (neededRight's default).
        if not self.store.can_link(caller.user, roi.owner_id, roi.group_id):
            raise _not_granted(self.store, roi.group_id, "Roi", roi_id)
        return self.store.insert_many([(kind, "", "", caller.user.id, roi.group_id, roi_id,
                                        _data(kind, obj))], _now())[0]

    # -- existing ------------------------------------------------------------------------

    def _owned(self, caller: Caller, kind: str, oid: int) -> Obj:
        stored = self.store.get(oid, kind)
        if stored is None or not self.servant.visible(caller, stored):
            raise api_usage(f"{kind}:{oid} does not exist.")
        return stored

    def _may_edit(self, caller: Caller, stored: Obj) -> None:
        if stored.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation(f"Updating {_java(stored.kind, stored.id)} not allowed.")

    def _existing_roi(self, caller: Caller, obj: Any, oid: int) -> int:
        stored = self._owned(caller, "Roi", oid)
        if not obj.isLoaded():
            return oid
        name, description = unwrap(obj._name), unwrap(obj._description)
        shapes = (obj._shapesSeq or []) if obj.isShapesLoaded() else []
        changed = (name or "") != stored.name or (description or "") != stored.description
        if changed or any(s is not None and unwrap(s.id) is None for s in shapes):
            self._may_edit(caller, stored)
        if changed:
            self.store.update(oid, name=name or "", description=description or "")
        rows = []
        for shape in shapes:
            if shape is None:
                continue
            kind = kind_of(shape)
            if unwrap(shape.id) is None:
                rows.append((kind, "", "", caller.user.id, stored.group_id, oid,
                             _data(kind, shape)))
            elif shape.isLoaded():
                self._existing_shape(caller, kind, shape, unwrap(shape.id))
        self.store.insert_many(rows, _now())
        self._annotations(caller, oid, obj)
        return oid

    def _existing_shape(self, caller: Caller, kind: str, obj: Any, oid: int) -> int:
        stored = self._owned(caller, kind, oid)
        if not obj.isLoaded():
            return oid
        data = _data(kind, obj)
        if data != stored.data:
            # Hibernate merges the whole object: what the client sent replaces it.
            self._may_edit(caller, stored)
            self.store.update(oid, data=data)
        return oid


# ---------------------------------------------------------------------------- deleting

def rois_of_images(store: Store, image_ids: list[int]) -> tuple[list[Obj], list[Obj]]:
    """The ROIs on these images and their shapes (deleted with an image, as omero-blitz's
    delete rules take an image's ROIs along)."""
    rois = store.by_parents(("Roi",), image_ids)
    return rois, store.by_parents(SHAPE_KINDS, [r.id for r in rois])


def deleted_objects(rois: list[Obj], shapes: list[Obj]) -> dict[str, list[int]]:
    """``Delete2Response.deletedObjects`` entries for ROIs and shapes."""
    out: dict[str, list[int]] = {}
    for obj in [*rois, *shapes]:
        out.setdefault(f"{JAVA_PACKAGE}.{obj.kind}", []).append(obj.id)
    return out


# ---------------------------------------------------------------------------- IRoi

def _page(opts: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """RoiI.filter: owner, group, offset, limit (null when not given)."""
    if opts is None:
        return None, None, None, None
    return (unwrap(opts.userId), unwrap(opts.groupId), unwrap(opts.offset),
            unwrap(opts.limit))


@servant(omero.api.IRoi)
class RoiServiceI(SessionServant):
    """IRoi over the emulator's store."""

    def _result(self, caller: Caller, rois: list[Obj], opts: Any,
                plane: tuple[int, int] | None = None) -> Any:
        store = self.ctx.store
        owner, group, offset, limit = _page(opts)
        readable: dict[tuple[int, int], bool] = {}  # asked once per owner and group

        def visible(roi: Obj) -> bool:
            key = (roi.owner_id, roi.group_id)
            if key not in readable:
                readable[key] = self.visible(caller, roi)
            return readable[key]

        rois = [r for r in rois if visible(r)
                and (owner is None or r.owner_id == owner)
                and (group is None or r.group_id == group)]
        shapes = store.by_parents(SHAPE_KINDS, [r.id for r in rois])
        if plane is not None:
            z, t = plane
            shapes = [s for s in shapes if s.data.get("theZ") in (None, z)
                      and s.data.get("theT") in (None, t)]
        # An inner join fetch of r.shapes: ROIs without (matching) shapes are not found.
        with_shapes = {s.parent_id for s in shapes}
        rois = sorted((r for r in rois if r.id in with_shapes), key=lambda r: r.id)
        start = offset or 0
        rois = rois[start:None if limit is None else start + limit]
        kept = {r.id for r in rois}
        models = modelmap.roi_models(store, caller.user, rois,
                                     [s for s in shapes if s.parent_id in kept])
        by_z: dict[int, list[Any]] = {}
        by_t: dict[int, list[Any]] = {}
        for roi in models:
            for shape in roi.copyShapes():
                by_z.setdefault(_index(shape.getTheZ()), []).append(shape)
                by_t.setdefault(_index(shape.getTheT()), []).append(shape)
        return omero.api.RoiResult(opts=opts, rois=models, byZ=by_z, byT=by_t)

    def findByImage(self, imageId: int, opts: Any, current: Ice.Current) -> Any:
        caller = self.caller(current)
        return self._result(caller, self.ctx.store.by_parents(("Roi",), [imageId]), opts)

    def findByRoi(self, roiId: int, opts: Any, current: Ice.Current) -> Any:
        caller = self.caller(current)
        roi = self.ctx.store.get(roiId, "Roi")
        return self._result(caller, [roi] if roi is not None else [], opts)

    def findByPlane(self, imageId: int, z: int, t: int, opts: Any,
                    current: Ice.Current) -> Any:
        caller = self.caller(current)
        return self._result(caller, self.ctx.store.by_parents(("Roi",), [imageId]), opts,
                            plane=(z, t))

    # -- statistics ----------------------------------------------------------------------

    def getShapeStatsRestricted(self, shapeIds: list[int], zForUnattached: int,
                                tForUnattached: int, channels: list[int],
                                current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return [self._stats(caller, sid, zForUnattached, tForUnattached, channels)
                for sid in shapeIds]

    def getShapeStatsList(self, shapeIds: list[int], current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return [self._stats(caller, sid, 0, 0, None) for sid in shapeIds]

    def getShapeStats(self, shapeId: int, current: Ice.Current) -> Any:
        return self._stats(self.caller(current), shapeId, 0, 0, None)

    def getRoiStats(self, roiId: int, current: Ice.Current) -> Any:
        caller = self.caller(current)
        store = self.ctx.store
        roi = store.get(roiId, "Roi")
        if roi is None or not self.visible(caller, roi):
            raise api_usage(f"Roi:{roiId} does not exist.")
        shapes = store.by_parents(SHAPE_KINDS, [roiId])
        per_shape = [self._stats(caller, s.id, 0, 0, None) for s in shapes]
        combined = _combine(per_shape)
        image_id = roi.parent_id or 0
        return omero.api.RoiStats(roiId=roiId, imageId=image_id,
                                  pixelsId=modelmap.pixels_id(image_id) if image_id else 0,
                                  combined=combined, perShape=per_shape)

    def _stats(self, caller: Caller, shape_id: int, z0: int, t0: int,
               channels: list[int] | None) -> Any:
        store = self.ctx.store
        shape = store.get(shape_id)
        if shape is None or shape.kind not in SHAPE_KINDS or not self.visible(caller, shape):
            raise api_usage(f"Shape:{shape_id} does not exist.")
        roi = store.get(shape.parent_id or 0, "Roi")
        image = store.get(roi.parent_id or 0, "Image") if roi is not None else None
        if image is None:
            raise api_usage(f"Shape:{shape_id} is on no image.")
        d = image.data
        z = shape.data.get("theZ", z0)
        t = shape.data.get("theT", t0)
        z = z0 if z is None else z
        t = t0 if t is None else t
        if channels is None or len(channels) == 0:
            chosen = [shape.data["theC"]] if shape.data.get("theC") is not None \
                else list(range(d["sizeC"]))
        else:
            chosen = list(channels)
        mask = shape_mask(shape, d["sizeX"], d["sizeY"])
        count = int(mask.sum())
        mins, maxs, sums, means, sds = [], [], [], [], []
        for c in chosen:
            plane = self._plane(image, z, c, t)
            values = plane[mask].astype(np.float64)
            empty = values.size == 0
            mins.append(0.0 if empty else float(values.min()))
            maxs.append(0.0 if empty else float(values.max()))
            sums.append(float(values.sum()))
            means.append(0.0 if empty else float(values.mean()))
            sds.append(0.0 if empty else float(values.std()))
        return omero.api.ShapeStats(shapeId=shape_id, channelIds=[int(c) for c in chosen],
                                    pointsCount=[count] * len(chosen), min=mins, max=maxs,
                                    sum=sums, mean=means, stdDev=sds)

    def _plane(self, image: Obj, z: int, c: int, t: int) -> np.ndarray:
        from cellprofiler_omero.emulator.services.pixels import levels_of, shape_of

        shape = shape_of(image)
        if not (0 <= z < shape.size_z and 0 <= c < shape.size_c and 0 <= t < shape.size_t):
            raise api_usage(f"Plane z={z} c={c} t={t} is outside Image:{image.id}.")
        if not self.ctx.pixels.path(image.id).exists():
            raise api_usage(f"Image:{image.id} has no pixel data.")
        array = self.ctx.pixels.array(image.id, shape, 0, levels_of(image))
        return np.asarray(array[t, c, z])


def _index(value: Any) -> int:
    """RoiResult's byZ/byT key: the plane, or -1 for shapes on every plane."""
    unwrapped = unwrap(value)
    return -1 if unwrapped is None else int(unwrapped)


def _combine(per_shape: list[Any]) -> Any:
    if not per_shape:
        return omero.api.ShapeStats(shapeId=-1, channelIds=[], pointsCount=[], min=[],
                                    max=[], sum=[], mean=[], stdDev=[])
    first = per_shape[0]
    n = len(first.channelIds)
    counts = [sum(s.pointsCount[i] for s in per_shape) for i in range(n)]
    sums = [sum(s.sum[i] for s in per_shape) for i in range(n)]
    return omero.api.ShapeStats(
        shapeId=-1, channelIds=list(first.channelIds), pointsCount=counts,
        min=[min(s.min[i] for s in per_shape) for i in range(n)],
        max=[max(s.max[i] for s in per_shape) for i in range(n)],
        sum=sums, mean=[sums[i] / counts[i] if counts[i] else 0.0 for i in range(n)],
        stdDev=[0.0] * n)


def shape_mask(shape: Obj, size_x: int, size_y: int) -> np.ndarray:
    """The pixels a shape covers on a (size_y, size_x) plane, as a boolean array."""
    d = shape.data
    yy, xx = np.mgrid[0:size_y, 0:size_x]
    if shape.kind in ("Rectangle", "Mask"):
        x, y = float(d.get("x", 0)), float(d.get("y", 0))
        w, h = float(d.get("width", 0)), float(d.get("height", 0))
        if shape.kind == "Rectangle":
            return (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)
        out = np.zeros((size_y, size_x), dtype=bool)
        iw, ih = int(w), int(h)
        if iw <= 0 or ih <= 0 or d.get("bytes") is None:
            return out
        bits = np.unpackbits(np.frombuffer(base64.b64decode(d["bytes"]), dtype=np.uint8))
        sub = bits[: iw * ih].reshape(ih, iw).astype(bool)
        x0, y0 = int(x), int(y)
        ys, xs = slice(max(y0, 0), min(y0 + ih, size_y)), slice(max(x0, 0), min(x0 + iw, size_x))
        out[ys, xs] = sub[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        return out
    if shape.kind == "Ellipse":
        cx, cy = float(d.get("x", 0)), float(d.get("y", 0))
        rx, ry = float(d.get("radiusX", 0)), float(d.get("radiusY", 0))
        if rx <= 0 or ry <= 0:
            return np.zeros((size_y, size_x), dtype=bool)
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    if shape.kind in ("Point", "Label"):
        out = np.zeros((size_y, size_x), dtype=bool)
        px, py = round(float(d.get("x", 0))), round(float(d.get("y", 0)))
        if 0 <= px < size_x and 0 <= py < size_y:
            out[py, px] = True
        return out
    points = _points(d.get("points") or "")
    if shape.kind == "Line":
        points = [(float(d.get("x1", 0)), float(d.get("y1", 0))),
                  (float(d.get("x2", 0)), float(d.get("y2", 0)))]
    if shape.kind == "Polygon" and len(points) >= 3:
        return _inside_polygon(points, xx, yy)
    out = np.zeros((size_y, size_x), dtype=bool)
    for (x1, y1), (x2, y2) in itertools.pairwise(points):
        steps = int(max(abs(x2 - x1), abs(y2 - y1))) + 1
        for i in range(steps + 1):
            px = round(x1 + (x2 - x1) * i / steps)
            py = round(y1 + (y2 - y1) * i / steps)
            if 0 <= px < size_x and 0 <= py < size_y:
                out[py, px] = True
    return out


def _points(text: str) -> list[tuple[float, float]]:
    out = []
    for pair in text.replace(",", " ").split():
        out.append(float(pair))
    return list(zip(out[0::2], out[1::2], strict=False))


def _inside_polygon(points: list[tuple[float, float]], xx: np.ndarray, yy: np.ndarray
                    ) -> np.ndarray:
    """Even-odd rule over pixel positions (crossing number)."""
    inside = np.zeros(xx.shape, dtype=bool)
    n = len(points)
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = ((yy >= min(y1, y2)) & (yy < max(y1, y2)))
        x_at = x1 + (yy - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xx < x_at)
    return inside

"""Saving ROIs on images: batches under the message limit, retried, exactly once.

``save_rois`` checks the target image once (it exists, the user may annotate it, every
shape lies inside it), then sends the ROIs in batches: as many ROIs per call as fit
``transfer.max_chunk_bytes`` (and at most ``rois_per_call``), a few batches at once.
The keys the image already holds are read once, with the image (``RoiSink.target``),
and those ROIs are not sent again (a rerun, another analysis worker). Each batch goes
through ``SessionManager.call``, so a dropped connection or a lapsed session retries
that batch, and a retried batch first asks the server which of its keys the image
holds now (``RoiSink.save(check=True)``) and sends only the rest: a retry whose first
reply was lost never makes a ROI twice. Nothing is sent before every shape has been
checked: a label image larger than its image is refused whole, not half-written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.roi_encoding import LabelsLargerThanImage, shape_extent
from cellprofiler_omero.core.roles import Connection, RoiTarget
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.shapes import MaskShape, NewRoi, PolygonShape, SavedRoi, Shape
from cellprofiler_omero.core.tasks import task_group

log = logging.getLogger(__name__)

#: Most ROIs sent in one call: keeps each call's server-side transaction (and the
#: query for the batch's keys) modest however small the shapes are.
ROIS_PER_CALL = 1000
#: Batches of one image in flight at once.
CONCURRENCY = 2
#: What a ROI costs in a message beyond its shapes' data: object headers, name, key,
#: the image reference, one shape's fields (a generous estimate of Ice's encoding).
_ROI_OVERHEAD_BYTES = 512
_SHAPE_OVERHEAD_BYTES = 256
#: A polygon point as text ("1234.5,678.5 ").
_POINT_BYTES = 16


@dataclass(frozen=True)
class RoiSaveResult:
    """What ``save_rois`` did: one ``SavedRoi`` per ROI asked for, in order."""

    rois: tuple[SavedRoi, ...]
    #: Batches sent (each one ``RoiSink.save``) and attempts made (retries included).
    batches: int
    attempts: int

    @property
    def ids(self) -> list[int]:
        return [roi.id for roi in self.rois]

    @property
    def added(self) -> int:
        """ROIs made by this call (the others were found from an earlier attempt)."""
        return sum(1 for roi in self.rois if not roi.reused)


def estimated_bytes(roi: NewRoi) -> int:
    """A ROI's size in an Ice message, estimated from above."""
    size = _ROI_OVERHEAD_BYTES + len(roi.name.encode()) + len(roi.description.encode())
    for shape in roi.shapes:
        size += _SHAPE_OVERHEAD_BYTES + len((shape.style.text or "").encode())
        if isinstance(shape, MaskShape):
            size += (shape.width * shape.height + 7) // 8
        elif isinstance(shape, PolygonShape):
            size += _POINT_BYTES * len(shape.points)
    return size


def plan_batches(rois: Sequence[NewRoi], max_bytes: int, rois_per_call: int = ROIS_PER_CALL
                 ) -> list[list[NewRoi]]:
    """``rois`` in order, cut into batches of at most ``rois_per_call`` ROIs and
    ``max_bytes`` estimated bytes each; a ROI alone above ``max_bytes`` is refused."""
    batches: list[list[NewRoi]] = []
    current: list[NewRoi] = []
    size = 0
    for roi in rois:
        cost = estimated_bytes(roi)
        if cost > max_bytes:
            raise UnsupportedData(
                f"ROI {roi.name!r} needs about {cost} bytes, more than one call may carry "
                f"(transfer.max_chunk_bytes = {max_bytes}).",
                hint="Raise transfer.max_chunk_bytes (within the Ice message limit) or "
                     "save the object as a Polygon.")
        if current and (size + cost > max_bytes or len(current) >= rois_per_call):
            batches.append(current)
            current, size = [], 0
        current.append(roi)
        size += cost
    if current:
        batches.append(current)
    return batches


def check_inside(rois: Sequence[NewRoi], target: RoiTarget) -> None:
    """Refuse (``LabelsLargerThanImage``) any shape that reaches outside the image or
    lies on a Z or T plane it does not have, before anything is written."""
    for roi in rois:
        for shape in roi.shapes:
            _check_shape(roi, shape, target)


def _check_shape(roi: NewRoi, shape: Shape, target: RoiTarget) -> None:
    right, bottom = shape_extent(shape)
    z, t = shape.plane.z, shape.plane.t
    left, top = ((shape.x, shape.y) if isinstance(shape, MaskShape) else
                 (min((p[0] for p in shape.points), default=0.0),
                  min((p[1] for p in shape.points), default=0.0))
                 if isinstance(shape, PolygonShape) else (0.0, 0.0))
    # A polygon traced around edge pixels lies half a pixel beyond their centres.
    slack = 0.5 if isinstance(shape, PolygonShape) else 0.0
    inside = (left >= -slack and top >= -slack and right <= target.size_x + slack
              and bottom <= target.size_y + slack
              and (z is None or 0 <= z < target.size_z)
              and (t is None or 0 <= t < target.size_t))
    if inside:
        return
    raise LabelsLargerThanImage(
        f"{roi.name} reaches outside image {target.image_id} "
        f"({target.size_x}×{target.size_y} pixels, {target.size_z} Z planes, "
        f"{target.size_t} time points): its {shape.kind.value} spans x {left:g}–{right:g}, "
        f"y {top:g}–{bottom:g}" + (f", Z {z}" if z is not None else "")
        + (f", T {t}" if t is not None else "") + ". Nothing was saved.",
        labels_size=(int(right), int(bottom)),
        image_size=(target.size_x, target.size_y, target.size_z),
        image_id=target.image_id,
        hint="Save the objects on the image they were found in (not on a cropped or "
             "resized one).")


async def save_rois(manager: SessionManager, rois: Sequence[NewRoi], *,
                    rois_per_call: int = ROIS_PER_CALL, concurrency: int = CONCURRENCY
                    ) -> RoiSaveResult:
    """Save ``rois`` (on one or more images) and return them saved, in order.

    Raises ``NotFound`` (an image does not exist or is not visible),
    ``PermissionDenied`` (the user may not annotate it) or ``LabelsLargerThanImage``
    before any ROI is sent. Fires ``omero_rois_saved`` once per image.

    Server calls: one look-up per image (``RoiSink.target``: the image and the keys of
    the ROIs it holds), then one call per batch; a retried batch first asks again which
    of its keys the image holds.
    """
    by_image: dict[int, list[int]] = {}
    for index, roi in enumerate(rois):
        by_image.setdefault(roi.image_id, []).append(index)
    saved: list[SavedRoi | None] = [None] * len(rois)
    counts = {"attempts": 0, "batches": 0}
    max_bytes = manager.settings.transfer.max_chunk_bytes

    async def target_of(image_id: int) -> RoiTarget:
        async def op(conn: Connection) -> RoiTarget:
            counts["attempts"] += 1
            async with contextlib.aclosing(
                    await manager.registry.open_roi_writer(conn)) as sink:
                return await sink.target(image_id)

        return await manager.call(op, what=f"checking image {image_id} for ROIs")

    # Every image is checked before any ROI is sent: nothing is half-written.
    targets: dict[int, RoiTarget] = {}
    for image_id, indices in by_image.items():
        targets[image_id] = await target_of(image_id)
        check_inside([rois[i] for i in indices], targets[image_id])

    async def send(batch: list[tuple[int, NewRoi]], limiter: anyio.CapacityLimiter) -> None:
        tries = 0

        async def op(conn: Connection) -> list[SavedRoi]:
            nonlocal tries
            tries += 1
            counts["attempts"] += 1
            async with contextlib.aclosing(
                    await manager.registry.open_roi_writer(conn)) as sink:
                # The first attempt's keys were just looked up; a retry looks again,
                # since the failed attempt may have saved before its reply was lost.
                return await sink.save([roi for _, roi in batch], check=tries > 1)

        image_id = batch[0][1].image_id
        async with limiter:
            result = await manager.call(
                op, what=f"saving {len(batch)} ROIs on image {image_id}")
        if len(result) != len(batch):
            raise UnsupportedData(
                f"The ROI writer returned {len(result)} ROIs for a batch of {len(batch)}.")
        counts["batches"] += 1
        for (index, _), item in zip(batch, result, strict=True):
            saved[index] = item

    for image_id, indices in by_image.items():
        existing = targets[image_id].existing
        first_of_key: dict[str, int] = {}
        todo: list[tuple[int, NewRoi]] = []
        for index in indices:
            roi = rois[index]
            if roi.key is not None and roi.key in existing:
                saved[index] = SavedRoi(existing[roi.key], image_id, roi.key, reused=True)
            elif roi.key is not None and roi.key in first_of_key:
                continue  # the same key twice: filled in from the first below
            else:
                if roi.key is not None:
                    first_of_key[roi.key] = index
                todo.append((index, roi))
        planned = plan_batches([roi for _, roi in todo], max_bytes, rois_per_call)
        batches, start = [], 0
        for part in planned:
            batches.append(todo[start:start + len(part)])
            start += len(part)
        limiter = anyio.CapacityLimiter(max(1, concurrency))
        async with task_group() as tg:
            for batch in batches:
                tg.start_soon(send, batch, limiter)
        for index in indices:
            key = rois[index].key
            if saved[index] is None and key is not None:
                first = saved[first_of_key[key]]
                assert first is not None
                saved[index] = SavedRoi(first.id, image_id, key, reused=True)
        done = [r for r in (saved[i] for i in indices) if r is not None]
        info = manager.info
        if info is not None:
            manager.registry.hook.omero_rois_saved(session=info, image_id=image_id,
                                                   rois=done)
        added = sum(1 for r in done if not r.reused)
        log.info("image %s: %d ROIs saved, %d found from an earlier attempt", image_id,
                 added, len(done) - added)
    complete = tuple(r for r in saved if r is not None)
    if len(complete) != len(rois):
        raise UnsupportedData(f"{len(rois) - len(complete)} ROIs were not saved.")
    return RoiSaveResult(complete, counts["batches"], counts["attempts"])

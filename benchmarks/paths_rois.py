"""Saving CellProfiler objects as OMERO ROIs: 10,000 objects on one image.

Three figures: the ROI save itself (``core.roi_writing.save_rois``: one look-up of the
image and its ROIs, then batches of up to 1,000 ROIs per ``IUpdate`` call), in ROIs/s
with the round trips one save makes; a rerun of the same save (every ROI found by its
key, none sent: the cost of exactly once); and encoding the label image into Mask and
Polygon shapes on this machine (no server). Every timed save goes to an image of its
own, uploaded before the timing starts, so each pass makes all its ROIs.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.target import Target
from cellprofiler_omero.benchmarks.timing import Pass, measure
from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.roi_encoding import label_rois
from cellprofiler_omero.core.roi_writing import save_rois
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.shapes import ShapeKind
from cellprofiler_omero.core.uploading import upload


@dataclass(frozen=True)
class RoisWorkload:
    """``objects`` round objects (``radius`` pixels) in a grid on one ``size``² image."""

    objects: int = 10_000
    size: int = 1000
    radius: int = 4
    repetitions: int = 2
    #: A warm-up pass would cost as much as a timed one; the session is opened (and the
    #: images uploaded) before the timing anyway.
    warmup: int = 0


def object_labels(workload: RoisWorkload) -> np.ndarray:
    """``workload.objects`` disks on a grid, numbered row by row (a nuclei-like label image)."""
    per_row = int(np.ceil(np.sqrt(workload.objects)))
    step = workload.size // per_row
    if step < 2 * workload.radius + 1:
        raise ValueError(f"{workload.objects} objects of radius {workload.radius} do not fit "
                         f"a {workload.size}² image.")
    yy, xx = np.mgrid[-workload.radius:workload.radius + 1, -workload.radius:workload.radius + 1]
    disk = yy * yy + xx * xx <= workload.radius * workload.radius
    labels = np.zeros((workload.size, workload.size), np.int32)
    for number in range(1, workload.objects + 1):
        row, column = divmod(number - 1, per_row)
        y, x = row * step + workload.radius, column * step + workload.radius
        box = labels[y - workload.radius:y + workload.radius + 1,
                     x - workload.radius:x + workload.radius + 1]
        box[disk] = number
    return labels


_names = itertools.count()


def _new_image(manager: SessionManager, size: int) -> int:
    return int(runtime.run(lambda: upload(manager, np.zeros((size, size), np.uint8),
                                          name=f"bench_rois_{next(_names)}")).id)


@contextlib.contextmanager
def save_path(target: Target, labels: np.ndarray, workload: RoisWorkload,
              last: list[int]) -> Iterator[Pass]:
    """Encode and save every object on a fresh image (uploaded before the timing)."""
    with target.session() as manager:
        images = [_new_image(manager, workload.size)
                  for _ in range(workload.warmup + workload.repetitions)]

        def one_pass() -> float:
            image = images.pop(0)
            rois = list(label_rois(labels, image, "Nuclei").values())
            result = runtime.run(lambda: save_rois(manager, rois))
            last[:] = [image, result.batches]
            return float(len(result.rois))

        yield one_pass


@contextlib.contextmanager
def rerun_path(target: Target, labels: np.ndarray, image: int) -> Iterator[Pass]:
    """The same save again on the same image: every ROI is found, none is sent."""
    with target.session() as manager:
        def one_pass() -> float:
            rois = list(label_rois(labels, image, "Nuclei").values())
            result = runtime.run(lambda: save_rois(manager, rois))
            if result.added:
                raise RuntimeError(f"a rerun made {result.added} ROIs again")
            return float(len(result.rois))

        yield one_pass


def _encode_rate(labels: np.ndarray, kind: ShapeKind) -> float:
    started = time.perf_counter()
    rois = label_rois(labels, 1, "Nuclei", kind=kind)
    return len(rois) / max(1e-9, time.perf_counter() - started)


def run(target: Target, workload: RoisWorkload) -> dict[str, Any]:
    """Time the save, its rerun and the encoding; the ROI section of the results."""
    labels = object_labels(workload)
    last: list[int] = []
    save = measure(functools.partial(save_path, target, labels, workload, last),
                   repetitions=workload.repetitions, warmup=workload.warmup, unit="ROIs/s")
    out: dict[str, Any] = {"status": "ok", "workload": asdict(workload),
                           "objects": workload.objects, "save": save}
    if last:
        out["batches"] = last[1]
        out["rerun"] = measure(functools.partial(rerun_path, target, labels, last[0]),
                               repetitions=1, warmup=0, unit="ROIs/s")
    out["encode_rois_per_s"] = {"mask": _encode_rate(labels, ShapeKind.MASK),
                                "polygon": _encode_rate(labels, ShapeKind.POLYGON)}
    return out

"""Creating images: omero-py's ``createImageFromNumpySeq`` vs ``core.uploading.upload``.

Both make a new image from the same uint16 array in every pass (a pass is one whole
upload, from array in memory to image complete on the server), for a 2D multichannel
image and a Z-stack. The two are timed round-robin (``measure_interleaved``), so both
share whatever else the machine does, and each pass's round trips are recorded.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.report import ratio
from cellprofiler_omero.benchmarks.target import Target
from cellprofiler_omero.benchmarks.timing import Pass, measure_interleaved
from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.uploading import upload


@dataclass(frozen=True)
class UploadCase:
    """A ``(Z, C, Y, X)`` uint16 image to create."""

    label: str
    z: int
    c: int
    size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.z, self.c, self.size, self.size)


@dataclass(frozen=True)
class UploadWorkload:
    cases: tuple[UploadCase, ...] = (UploadCase("2D, 3 channels × 2048²", 1, 3, 2048),
                                     UploadCase("Z-stack, 32 z × 2 channels × 1024²", 32, 2,
                                                1024))
    repetitions: int = 3
    warmup: int = 1


_names = itertools.count()


@contextlib.contextmanager
def blitz_path(target: Target, pixels: np.ndarray) -> Iterator[Pass]:
    """``conn.createImageFromNumpySeq`` with planes in its Z, C, T order."""
    z_size, c_size = pixels.shape[:2]
    with target.blitz() as conn:
        def one_pass() -> float:
            planes = (pixels[z, c] for z in range(z_size) for c in range(c_size))
            image = conn.createImageFromNumpySeq(planes, f"bench_blitz_{next(_names)}",
                                                 sizeZ=z_size, sizeC=c_size, sizeT=1)
            if image is None:
                raise RuntimeError("createImageFromNumpySeq returned no image")
            return float(pixels.nbytes)

        yield one_pass


@contextlib.contextmanager
def ours_path(target: Target, pixels: np.ndarray) -> Iterator[Pass]:
    """``core.uploading.upload(manager, array, axes="ZCYX")``."""
    with target.session() as manager:
        def one_pass() -> float:
            runtime.run(lambda: upload(manager, pixels, name=f"bench_upload_{next(_names)}",
                                       axes="ZCYX"))
            return float(pixels.nbytes)

        yield one_pass


def run(target: Target, workload: UploadWorkload) -> dict[str, Any]:
    """Time both paths on every case; the upload section of the results."""
    rng = np.random.default_rng(2)
    cases: dict[str, Any] = {}
    for case in workload.cases:
        pixels = rng.integers(0, 2**16, case.shape, dtype=np.uint16)
        timed = measure_interleaved(
            {"blitz": functools.partial(blitz_path, target, pixels),
             "ours": functools.partial(ours_path, target, pixels)},
            repetitions=workload.repetitions, warmup=workload.warmup)
        blitz, ours = timed["blitz"], timed["ours"]
        cases[f"z{case.z}_c{case.c}_{case.size}"] = {
            "label": case.label, "shape_zcyx": list(case.shape), "bytes": pixels.nbytes,
            "blitz": blitz, "ours": ours,
            "ratio": ratio(blitz.get("median_s"), ours.get("median_s")),
        }
    return {"status": "ok", "repetitions": workload.repetitions,
            "workload": asdict(workload), "cases": cases}

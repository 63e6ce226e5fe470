"""Turning numpy arrays into new OMERO images, exactly once, with provenance.

Shapes are normalised to ``(T, Z, C, Y, X)``; dtypes to an OMERO pixel type
(``bool`` → uint8 0/1; int64/uint64 labels → the smallest integer type that holds
their range, checked; float16 → float). A client-generated key travels with the
upload so that a retry finds the image an earlier attempt made.

``upload`` does it all in one retried operation; ``begin_upload`` finds or creates the
image (its id is final) and returns a ``PendingUpload`` whose ``finish()`` writes the
pixels later, e.g. on a background thread while the pipeline goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cellprofiler_omero.core.errors import UnsupportedData
from cellprofiler_omero.core.model import NewImage, PhysicalSize, PixelType, UploadedImage
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)

#: Namespace of the map annotation that records where an uploaded image came from.
PROVENANCE_NS = "openmicroscopy.org/cellprofiler-omero/provenance"

_AXES_BY_NDIM = {2: "YX", 4: "ZYXC", 5: "TZYXC"}


def to_tzcyx(array: np.ndarray, axes: str | None = None) -> np.ndarray:
    """A view of ``array`` as ``(T, Z, C, Y, X)``.

    ``axes`` names the input's axes (letters T, Z, C, Y, X); it is required for 3-D
    input, which is ambiguous between ``YXC`` (multichannel) and ``ZYX`` (volume).
    """
    if axes is None:
        if array.ndim == 3:
            raise ValueError(
                "A 3-D array is either YXC (one multichannel plane) or ZYX (a volume); "
                "pass axes='YXC' or axes='ZYX'.")
        axes = _AXES_BY_NDIM.get(array.ndim)
        if axes is None:
            raise ValueError(f"Cannot upload a {array.ndim}-D array; give 2 to 5 axes.")
    axes = axes.upper()
    if len(axes) != array.ndim or len(set(axes)) != len(axes) or set(axes) - set("TZCYX") \
            or not {"Y", "X"} <= set(axes):
        raise ValueError(f"axes={axes!r} does not describe a {array.ndim}-D array "
                         "(use distinct letters from T, Z, C, Y, X, with Y and X).")
    for letter in "TZCYX":
        if letter not in axes:
            array = array[..., None]
            axes += letter
    return np.transpose(array, [axes.index(letter) for letter in "TZCYX"])


def omero_dtype(array: np.ndarray) -> tuple[np.ndarray, PixelType]:
    """The array in a dtype OMERO stores, and that type (checked, never wrapping)."""
    dt = array.dtype
    if dt == np.bool_:
        return array.astype(np.uint8), PixelType.UINT8
    if dt == np.float16:
        return array.astype(np.float32), PixelType.FLOAT
    if dt.kind in "iu" and dt.itemsize == 8:
        lo = int(array.min()) if array.size else 0
        hi = int(array.max()) if array.size else 0
        for candidate in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (
                np.int8, np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return array.astype(candidate), PixelType.from_dtype(candidate)
        raise UnsupportedData(
            f"Values from {lo} to {hi} do not fit any OMERO integer type (32 bits at most).",
            hint="Relabel the objects or convert to float before saving.")
    if dt.kind == "c":
        raise UnsupportedData("Complex arrays cannot be saved to OMERO by this package.")
    return array, PixelType.from_dtype(dt)


def new_key() -> str:
    """A fresh upload key (callers that may retry pass their own stable key instead)."""
    return uuid.uuid4().hex


def content_key(array: np.ndarray, *, name: str, dataset_id: int | None, axes: str,
                source_image_ids: Sequence[int] = ()) -> str:
    """The exactly-once key of an upload: the same image saved again gets the same key.

    A SHA-256 (hex) over the image's name, its dataset, the ids of the images it was
    made from, its axes, dtype and shape, and the SHA-256 of its pixels (C order). A
    rerun of a pipeline, or a retry after a lost reply, therefore finds the image an
    earlier attempt made (``ImageSink.upload`` looks it up by this key) instead of
    making a second one; any change to the pixels or to where they go makes a new one.
    The key says nothing about the session or the time, so reruns by other processes
    (analysis workers, a restarted run) agree on it.
    """
    pixels = hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()
    identity = "\0".join([name, str(dataset_id), ",".join(str(i) for i in source_image_ids),
                          axes, str(array.dtype), str(array.shape)])
    return hashlib.sha256(identity.encode() + pixels).hexdigest()


@runtime_checkable
class StagedImageSink(Protocol):
    """An ``ImageSink`` that can create the image first and write its pixels later.

    ``begin`` finds a completed upload of the key (``(image, None)``) or creates the
    image (``(image, token)``); ``finish(pixels, spec, token)`` writes and completes it,
    possibly through another sink of the same transport (after a session renewal). A
    transport without it uploads in one step and its image's id is known only then.
    """

    async def begin(self, pixels: np.ndarray, spec: NewImage
                    ) -> tuple[UploadedImage, Any | None]: ...

    async def finish(self, pixels: np.ndarray, spec: NewImage, token: Any
                     ) -> UploadedImage: ...


def _prepare(array: np.ndarray, *, name: str, axes: str | None, dataset_id: int | None,
             channel_names: Sequence[str], description: str, physical_size: PhysicalSize,
             source_image_ids: Sequence[int], source_urls: Sequence[str],
             client_key: str | None) -> tuple[np.ndarray, NewImage]:
    pixels = to_tzcyx(array, axes)
    pixels, _ptype = omero_dtype(pixels)
    size_c = pixels.shape[2]
    names = tuple(channel_names) or tuple(f"C{i}" for i in range(size_c))
    if len(names) != size_c:
        raise ValueError(f"{len(names)} channel names for {size_c} channels.")
    spec = NewImage(name=name, client_key=client_key or new_key(), channel_names=names,
                    description=description, dataset_id=dataset_id,
                    physical_size=physical_size, source_image_ids=tuple(source_image_ids),
                    source_urls=tuple(source_urls))
    return pixels, spec


def _uploaded(manager: SessionManager, result: UploadedImage, spec: NewImage) -> None:
    info = manager.info
    if info is not None:
        manager.registry.hook.omero_image_uploaded(session=info, image=result, spec=spec)
    log.info("%s image %s (%s) %s", "found" if result.reused else "uploaded", result.id,
             spec.name, f"in dataset {spec.dataset_id}" if spec.dataset_id else
             "without a dataset")


async def upload(manager: SessionManager, array: np.ndarray, *, name: str,
                 axes: str | None = None, dataset_id: int | None = None,
                 channel_names: Sequence[str] = (), description: str = "",
                 physical_size: PhysicalSize = PhysicalSize(),
                 source_image_ids: Sequence[int] = (), source_urls: Sequence[str] = (),
                 client_key: str | None = None) -> UploadedImage:
    """Create an image from ``array`` on the connected server and return it."""
    pixels, spec = _prepare(array, name=name, axes=axes, dataset_id=dataset_id,
                            channel_names=channel_names, description=description,
                            physical_size=physical_size, source_image_ids=source_image_ids,
                            source_urls=source_urls, client_key=client_key)

    async def op(conn: Connection) -> UploadedImage:
        # aclosing, not ``async with sink``: a third-party sink need only have aclose().
        async with contextlib.aclosing(await manager.registry.open_uploader(conn)) as sink:
            return await sink.upload(pixels, spec)

    # A retry runs the whole upload again: it finds the image an interrupted attempt
    # made, sets it aside and makes it anew.
    result = await manager.call(op)
    _uploaded(manager, result, spec)
    return result


@dataclass
class PendingUpload:
    """An upload whose image exists (``image.id`` is final) and whose pixels
    ``finish()`` writes. ``done`` when nothing is left to write (found complete, or a
    transport that uploads in one step)."""

    manager: SessionManager
    image: UploadedImage
    spec: NewImage
    pixels: np.ndarray | None
    token: Any | None

    @property
    def done(self) -> bool:
        return self.token is None

    async def finish(self) -> UploadedImage:
        """Write the pixels and complete the image (once; later calls return it).

        Raises ``UploadInterrupted`` when the writing stopped after its first pixels
        (the image stays marked incomplete: the same upload run again makes it anew).
        """
        if self.token is None:
            return self.image
        pixels, token = self.pixels, self.token
        assert pixels is not None

        async def op(conn: Connection) -> UploadedImage:
            async with contextlib.aclosing(
                    await self.manager.registry.open_uploader(conn)) as sink:
                if not isinstance(sink, StagedImageSink):
                    raise TypeError(f"{sink!r} cannot finish an upload it did not begin.")
                return await sink.finish(pixels, self.spec, token)

        result = await self.manager.call(op)
        self.token, self.pixels = None, None  # the pixels may be freed
        _uploaded(self.manager, result, self.spec)
        return result


async def begin_upload(manager: SessionManager, array: np.ndarray, *, name: str,
                       axes: str | None = None, dataset_id: int | None = None,
                       channel_names: Sequence[str] = (), description: str = "",
                       physical_size: PhysicalSize = PhysicalSize(),
                       source_image_ids: Sequence[int] = (), source_urls: Sequence[str] = (),
                       client_key: str | None = None) -> PendingUpload:
    """Find or create the image (its id is final) and leave its pixels to ``finish()``.

    Arguments as ``upload``. Exactly once as ``upload``: until ``finish()`` completes, the
    image is marked incomplete, so if the process dies the same upload run again (same
    key) sets it aside and makes it anew. A transport that cannot stage uploads does the
    whole upload here.
    """
    pixels, spec = _prepare(array, name=name, axes=axes, dataset_id=dataset_id,
                            channel_names=channel_names, description=description,
                            physical_size=physical_size, source_image_ids=source_image_ids,
                            source_urls=source_urls, client_key=client_key)

    async def op(conn: Connection) -> tuple[UploadedImage, Any | None]:
        async with contextlib.aclosing(await manager.registry.open_uploader(conn)) as sink:
            if isinstance(sink, StagedImageSink):
                return await sink.begin(pixels, spec)
            return await sink.upload(pixels, spec), None

    image, token = await manager.call(op)
    pending = PendingUpload(manager, image, spec, pixels if token is not None else None,
                            token)
    if pending.done:
        _uploaded(manager, image, spec)
    return pending

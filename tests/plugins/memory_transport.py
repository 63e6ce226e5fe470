"""A third-party transport that lives only in the test tree: images held in memory.

It is registered through entry-point metadata written by the tests, exactly as an
installed package would be, and proves a plugin can serve without changes to core.
Like any third-party plugin it imports only ``cellprofiler_omero.plugin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cellprofiler_omero.plugin import (
    AsyncClosing,
    AuthError,
    Channel,
    Credentials,
    Group,
    ImageMeta,
    Kind,
    Node,
    NotFound,
    ObjectRef,
    Page,
    PixelRequest,
    PixelType,
    ServerAddress,
    SessionInfo,
    TransportUnavailable,
    hookimpl,
)

IMAGES: dict[int, np.ndarray] = {
    1: np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5),  # (Z, C, Y, X)
}
CALLS: list[str] = []
STATE: dict[str, Any] = {"fail_reads": 0}


class MemoryConnection:
    transport = "memory"

    def __init__(self, address: ServerAddress, credentials: Credentials) -> None:
        self._key = credentials.session_key or "memory-session"
        self.info = SessionInfo(address, credentials.user or "demo", 2, "demo", 3,
                                credentials.source)

    @property
    def session_key(self) -> str:
        return self._key

    async def ping(self) -> None:
        return None

    async def image_meta(self, image_id: int) -> ImageMeta:
        if image_id not in IMAGES:
            raise NotFound(f"Image {image_id} does not exist.")
        z, c, y, x = IMAGES[image_id].shape
        return ImageMeta(image_id, f"mem{image_id}", x, y, z, c, 1, PixelType.UINT16,
                         tuple(Channel(f"ch{i}") for i in range(c)))

    async def image_metas(self, image_ids: Sequence[int]) -> dict[int, ImageMeta]:
        return {i: await self.image_meta(i) for i in image_ids if i in IMAGES}

    async def images_in(self, ref: ObjectRef) -> list[ObjectRef]:
        return [ref] if ref.kind is Kind.IMAGE else []

    async def children(self, ref: ObjectRef | None, offset: int, limit: int) -> Page:
        return Page((Node("Image", 1, "mem1"),), 0, 1)

    async def groups(self) -> list[Group]:
        return []  # no groups: a browser shows children(None)

    async def group_children(self, group_id: int, offset: int, limit: int) -> Page:
        return Page((), offset, 0)

    async def thumbnails(self, image_ids: Sequence[int], size: int) -> dict[int, bytes]:
        return {}

    async def can_write(self, kind: str, object_id: int) -> bool:
        return False

    async def create_user_session(self, time_to_idle_ms: int) -> str:
        return "memory-token"

    async def close(self, *, detach: bool) -> None:
        CALLS.append(f"close detach={detach}")


class MemorySource(AsyncClosing):
    transport = "memory"

    def __init__(self, meta: ImageMeta) -> None:
        self._meta = meta

    async def metadata(self) -> ImageMeta:
        return self._meta

    async def read(self, request: PixelRequest) -> np.ndarray:
        CALLS.append("memory read")
        if STATE["fail_reads"]:
            STATE["fail_reads"] -= 1
            raise TransportUnavailable("memory transport is down")
        data = IMAGES[self._meta.id][list(request.z)][:, list(request.c)]
        if request.region is not None:
            r = request.region
            data = data[:, :, r.y:r.y + r.h, r.x:r.x + r.w]
        return np.ascontiguousarray(data)

    async def aclose(self) -> None:
        CALLS.append("memory aclose")


@hookimpl
def omero_connect(address: ServerAddress, credentials: Credentials,
                  settings: Mapping[str, Any]) -> MemoryConnection | None:
    if address.host != "memory":
        return None
    if credentials.password is not None and credentials.password != "demo":
        raise AuthError("wrong password")
    return MemoryConnection(address, credentials)


@hookimpl
def omero_open_reader(connection: Any, image: ObjectRef, meta: ImageMeta,
                      settings: Any) -> MemorySource | None:
    if not isinstance(connection, MemoryConnection):
        return None
    return MemorySource(meta)

"""What the OMERO browser shows, fetched page by page: no wx here, so it is testable headless.

The tree is the user's groups ▸ Projects ▸ Datasets ▸ Images and groups ▸ Screens ▸
Plates ▸ Wells ▸ fields. Every level comes from the connection's role
(``core.roles.Connection``: ``groups``, ``group_children``, ``children``,
``thumbnails``) through ``SessionManager.call``, so a lapsed session is renewed as for
reads. A connection that shows no groups gets one "My data" node whose children are
``children(None)`` (the user's Projects and Screens).

Every listing is a ``Page``: the browser asks for ``PAGE_SIZE`` children at a time and
shows a "load more…" entry while ``Page.has_more``, so a 1536-well plate is never cut.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cellprofiler_omero.core import refs
from cellprofiler_omero.core.errors import NoTransport, OmeroError
from cellprofiler_omero.core.model import Node, Page
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.core.session import SessionManager

#: Children fetched per request; the environment variable exists for tests and huge screens.
PAGE_SIZE = int(os.environ.get("CELLPROFILER_OMERO_BROWSE_PAGE", "100") or 100)
#: Longest side of a thumbnail, in pixels (tree icons are scaled down from these).
THUMBNAIL_SIZE = 96

GROUP = "Group"
MY_DATA = "MyData"


@dataclass(frozen=True)
class Entry:
    """A browser node: what it is, and where its children come from."""

    node: Node
    group_id: int | None = None

    @property
    def ref(self) -> ObjectRef | None:
        """The OMERO object, or ``None`` for groups and the "My data" node."""
        if self.node.kind in (GROUP, MY_DATA):
            return None
        return ObjectRef(Kind(self.node.kind), self.node.id)

    @property
    def is_image(self) -> bool:
        return self.node.kind == Kind.IMAGE.value

    @property
    def has_children(self) -> bool:
        if self.is_image:
            return False
        return self.node.child_count is None or self.node.child_count > 0


def _xyzct(node: Node) -> tuple[int, ...]:
    """An image node's sizes in X, Y, Z, C, T order (missing trailing sizes are 1)."""
    return (*(node.size or ()), 1, 1, 1, 1, 1)[:5]


def describe(node: Node) -> str:
    """One line for the tree: the name, and sizes for images or a count for containers."""
    if node.kind == Kind.IMAGE.value and node.size:
        x, y, z, c, t = _xyzct(node)
        dims = f"{x}×{y}"
        extra = ", ".join(f"{axis}{n}" for axis, n in (("Z", z), ("C", c), ("T", t)) if n > 1)
        ptype = f", {node.pixel_type}" if node.pixel_type else ""
        return f"{node.name}  [{dims}{', ' + extra if extra else ''}{ptype}]"
    if node.child_count is not None and node.kind not in (Kind.IMAGE.value,):
        return f"{node.name}  ({node.child_count})"
    return node.name


def details(node: Node) -> list[tuple[str, str]]:
    """Label/value rows for the browser's detail panel."""
    rows = [("Type", "OMERO group" if node.kind == GROUP else node.kind), ("Name", node.name)]
    if node.kind not in (GROUP, MY_DATA):
        rows.append(("ID", str(node.id)))
    if node.size:
        x, y, z, c, t = _xyzct(node)
        rows += [("Size", f"{x} × {y} pixels"), ("Planes", f"Z {z} · C {c} · T {t}")]
    if node.pixel_type:
        rows.append(("Pixel type", node.pixel_type))
    if node.child_count is not None:
        rows.append(("Contains", str(node.child_count)))
    return rows


class BrowseSource:
    """Async listings for the browser, through the process's session manager.

    Every request goes through ``SessionManager.call`` and the connection's role
    (``core.roles.Connection``) only: a lapsed session is renewed and a dropped call
    retried, for group listings and thumbnails as for reads.
    """

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    async def _conn(self) -> Connection:
        return await self.manager.connection()

    # -- listing --------------------------------------------------------------------------

    async def roots(self) -> list[Entry]:
        """The user's groups (current group first), or one "My data" node when the
        connection shows no groups."""
        groups = await self.manager.call(lambda c: c.groups(), what="listing your groups")
        if not groups:
            conn = await self._conn()
            return [Entry(Node(MY_DATA, 0, f"My data on {conn.info.server.host}"))]
        return [Entry(Node(GROUP, g.id, g.name, g.child_count), g.id) for g in groups]

    async def children(self, entry: Entry, offset: int, limit: int = 0) -> Page:
        """One page of ``entry``'s children (``limit`` 0: ``PAGE_SIZE``)."""
        limit = limit or PAGE_SIZE
        if entry.node.kind == GROUP:
            gid = entry.node.id
            return await self.manager.call(lambda c: c.group_children(gid, offset, limit),
                                           what=f"listing group {entry.node.name}")
        if entry.node.kind == MY_DATA:
            return await self.manager.call(lambda c: c.children(None, offset, limit))
        ref = entry.ref
        assert ref is not None
        return await self.manager.call(lambda c: c.children(ref, offset, limit), ref)

    # -- thumbnails -----------------------------------------------------------------------

    async def thumbnails(self, image_ids: Sequence[int], size: int = THUMBNAIL_SIZE
                         ) -> dict[int, bytes]:
        """JPEG thumbnails by image id (images without one are left out)."""
        if not image_ids:
            return {}
        ids = list(image_ids)
        return await self.manager.call(lambda c: c.thumbnails(ids, size),
                                       what="loading thumbnails")

    # -- file list ------------------------------------------------------------------------

    async def image_urls(self, entries: Iterable[Entry]) -> list[str]:
        """OMERO.web links of the selected images and of every image in the selected containers.

        Groups and "My data" add everything they hold. The order is the selection's, each
        image once.
        """
        conn = await self._conn()
        info = conn.info
        base = self.manager.settings.server.web_url or None
        out: list[str] = []
        for entry in entries:
            ref = entry.ref
            if ref is None:
                page = await self.children(entry, 0, 1_000_000)
                out += await self.image_urls(Entry(n, entry.group_id) for n in page.items)
                continue
            images = [ref] if ref.kind is Kind.IMAGE else await self._images_in(ref)
            for image in images:
                out.append(refs.web_url(ObjectRef(Kind.IMAGE, image.id, info.server.host),
                                        base))
        return list(dict.fromkeys(out))

    async def _images_in(self, ref: ObjectRef) -> list[ObjectRef]:
        return await self.manager.call(lambda c: c.images_in(ref), ref)


def error_text(exc: BaseException) -> str:
    """A one-paragraph message for the user (our errors carry a hint on what to do).

    When the only transport tried failed, its own message is the one that says what to
    do (the registry's wrapper adds a hint about transport settings that a user who
    mistyped a server name does not need).
    """
    if isinstance(exc, NoTransport) and exc.only_cause is not None:
        exc = exc.only_cause
    if isinstance(exc, OmeroError):
        return f"{exc.message} {exc.hint}" if exc.hint else exc.message
    return f"{type(exc).__name__}: {exc}"

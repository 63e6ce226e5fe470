"""What the OMERO browser shows, fetched page by page: no wx here, so it is testable headless.

The tree is the user's groups ▸ Projects ▸ Datasets ▸ Images and groups ▸ Screens ▸
Plates ▸ Wells ▸ fields. Below a group, the core's transport-neutral
``Connection.children`` answers every level; the group level itself (and thumbnails)
need OMERO's own services, reached through the Ice transport's session. With another
transport the browser shows one "My data" node whose children are
``children(None)`` (the user's Projects and Screens).

Every listing is a ``Page``: the browser asks for ``PAGE_SIZE`` children at a time and
shows a "load more…" entry while ``Page.has_more``, so a 1536-well plate is never cut.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cellprofiler_omero.core import refs
from cellprofiler_omero.core.errors import NoTransport, OmeroError
from cellprofiler_omero.core.model import Node, Page
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.session import SessionManager

#: Children fetched per request; the environment variable exists for tests and huge screens.
PAGE_SIZE = int(os.environ.get("CELLPROFILER_OMERO_BROWSE_PAGE", "100") or 100)
#: Longest side of a thumbnail, in pixels (tree icons are scaled down from these).
THUMBNAIL_SIZE = 96

GROUP = "Group"
MY_DATA = "MyData"
# OMERO's built-in groups (by name, for servers that do not answer getSecurityRoles).
_SYSTEM_GROUPS = {"system", "user", "guest"}

# What a group holds, in the order shown: (kind, count query, page query). Datasets and
# Plates that sit in a Project or Screen are shown there, not at the top.
_GROUP_LEVEL: tuple[tuple[str, str, str, str], ...] = (
    ("Project", "Project p", "", "ProjectDatasetLink"),
    ("Dataset", "Dataset p", " and not exists (select l from ProjectDatasetLink l "
                             "where l.child = p)", "DatasetImageLink"),
    ("Screen", "Screen p", "", "ScreenPlateLink"),
    ("Plate", "Plate p", " and not exists (select l from ScreenPlateLink l where l.child = p)",
     ""),
)


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
    """Async listings for the browser, through the process's session manager."""

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager

    async def _conn(self) -> Any:
        return await self.manager.connection()

    @staticmethod
    def _ice(conn: Any) -> Any | None:
        return conn if getattr(conn, "transport", None) == "ice" and hasattr(conn, "sf") \
            else None

    # -- listing --------------------------------------------------------------------------

    async def roots(self) -> list[Entry]:
        """The user's groups (current group first), or one "My data" node without Ice."""
        conn = await self._conn()
        ice = self._ice(conn)
        if ice is None:
            return [Entry(Node(MY_DATA, 0, f"My data on {conn.info.server.host}"))]
        return list(await ice.call(self._groups, ice, what="listing your groups"))

    @staticmethod
    def _groups(ice: Any) -> list[Entry]:
        from omero.rtypes import unwrap

        from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, params

        sf = ice.sf
        ec = sf.getAdminService().getEventContext()
        hidden: set[int] = set()
        try:
            roles = sf.getAdminService().getSecurityRoles()
            hidden = {int(roles.systemGroupId), int(roles.userGroupId), int(roles.guestGroupId)}
        except Exception:  # servers (or emulators) without roles: hide the built-ins by name
            hidden = set()
        ids = [int(g) for g in ec.memberOfGroups]
        rows = sf.getQueryService().projection(
            "select g.id, g.name from ExperimenterGroup g where g.id in (:ids) "
            "order by lower(g.name)", params(ids=ids), ALL_GROUPS)
        current = int(ec.groupId)
        uid = int(ec.userId)
        out: list[Entry] = []
        for row in rows:
            gid, name = int(unwrap(row[0])), str(unwrap(row[1]))
            if gid in hidden or name in _SYSTEM_GROUPS:
                continue
            count = sum(BrowseSource._count(ice, kind_from, extra, uid, gid)
                        for _, kind_from, extra, _ in _GROUP_LEVEL)
            out.append(Entry(Node(GROUP, gid, name, count), gid))
        out.sort(key=lambda e: (e.node.id != current, e.node.name.lower()))
        return out

    @staticmethod
    def _count(ice: Any, kind_from: str, extra: str, uid: int, gid: int) -> int:
        from omero.rtypes import unwrap

        from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, params

        rows = ice.sf.getQueryService().projection(
            f"select count(p) from {kind_from} where p.details.owner.id = :uid and "
            f"p.details.group.id = :gid{extra}", params(uid=uid, gid=gid), ALL_GROUPS)
        return int(unwrap(rows[0][0])) if rows else 0

    async def children(self, entry: Entry, offset: int, limit: int = 0) -> Page:
        """One page of ``entry``'s children (``limit`` 0: ``PAGE_SIZE``)."""
        limit = limit or PAGE_SIZE
        conn = await self._conn()
        if entry.node.kind == GROUP:
            ice = self._ice(conn)
            assert ice is not None
            page: Page = await ice.call(self._group_children, ice, entry.node.id, offset,
                                        limit, what=f"listing group {entry.node.name}")
            return page
        if entry.node.kind == MY_DATA:
            return await self.manager.call(lambda c: c.children(None, offset, limit))
        ref = entry.ref
        assert ref is not None
        return await self.manager.call(lambda c: c.children(ref, offset, limit))

    @staticmethod
    def _group_children(ice: Any, gid: int, offset: int, limit: int) -> Page:
        from omero.rtypes import unwrap

        from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, params

        query = ice.sf.getQueryService()
        uid = ice.info.user_id
        items: list[Node] = []
        total = 0
        for kind, kind_from, extra, link in _GROUP_LEVEL:
            count = BrowseSource._count(ice, kind_from, extra, uid, gid)
            # This kind holds the overall rows [total, total + count); take the part of
            # the requested rows [offset, offset + limit) that falls in it.
            start, end = max(0, offset - total), min(count, offset + limit - total)
            total += count
            if end <= start:
                continue
            p = params(uid=uid, gid=gid)
            p.page(start, end - start)
            for obj in query.findAllByQuery(
                    f"select p from {kind_from} where p.details.owner.id = :uid and "
                    f"p.details.group.id = :gid{extra} order by lower(p.name), p.id", p,
                    ALL_GROUPS):
                oid = int(unwrap(obj.getId()))
                if kind == "Plate":
                    n_rows = query.projection("select count(w) from Well w where "
                                              "w.plate.id = :id", params(id=oid), ALL_GROUPS)
                else:
                    n_rows = query.projection(f"select count(l) from {link} l where "
                                              "l.parent.id = :id", params(id=oid), ALL_GROUPS)
                n = int(unwrap(n_rows[0][0])) if n_rows else 0
                items.append(Node(kind, oid, str(unwrap(obj.getName())), n))
        return Page(tuple(items), offset, total)

    # -- thumbnails -----------------------------------------------------------------------

    async def thumbnails(self, image_ids: Sequence[int], size: int = THUMBNAIL_SIZE
                         ) -> dict[int, bytes]:
        """JPEG thumbnails by image id (missing ones are left out; ``{}`` without Ice)."""
        if not image_ids:
            return {}
        conn = await self._conn()
        ice = self._ice(conn)
        if ice is None:
            return {}
        result: dict[int, bytes] = await ice.call(self._thumbnails, ice, list(image_ids),
                                                  size, what="loading thumbnails")
        return result

    @staticmethod
    def _thumbnails(ice: Any, image_ids: list[int], size: int) -> dict[int, bytes]:
        from omero.rtypes import rint, unwrap

        from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, params

        sf = ice.sf
        # The ThumbnailStore works on Pixels ids, which on a real server differ from
        # image ids.
        rows = sf.getQueryService().projection(
            "select p.id, p.image.id from Pixels p where p.image.id in (:ids)",
            params(ids=image_ids), ALL_GROUPS)
        by_pixels = {int(unwrap(r[0])): int(unwrap(r[1])) for r in rows}
        if not by_pixels:
            return {}
        store = sf.createThumbnailStore()
        try:
            # Thumbnails of images from several groups need the all-groups context.
            found = store.getThumbnailByLongestSideSet(rint(size), list(by_pixels),
                                                       ALL_GROUPS)
        finally:
            with contextlib.suppress(Exception):  # a failed close must not lose thumbnails
                store.close()
        return {by_pixels[int(pid)]: bytes(data) for pid, data in found.items()
                if int(pid) in by_pixels and data}

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
        async def images(conn: Any) -> list[ObjectRef]:
            result: list[ObjectRef] = await conn.images_in(ref)
            return result

        return await self.manager.call(images)


def error_text(exc: BaseException) -> str:
    """A one-paragraph message for the user (our errors carry a hint on what to do).

    When the only transport tried failed, its own message is the one that says what to
    do (the registry's wrapper adds a hint about transport settings that a user who
    mistyped a server name does not need).
    """
    if isinstance(exc, NoTransport):
        single = re.fullmatch(r"No transport could [^:]+: [\w.-]+: (.*)\.", exc.message,
                              re.DOTALL)
        if single and "; " not in single.group(1):
            return single.group(1)
    if isinstance(exc, OmeroError):
        return f"{exc.message} {exc.hint}" if exc.hint else exc.message
    return f"{type(exc).__name__}: {exc}"
